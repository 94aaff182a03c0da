"""The stand-in's relay, server and gateway (see the package docstring).

Relay: one gRPC method whose protobuf message (a BytesValue) carries a JSON call (endpoint
name and arguments, tagged: polars DataFrames as Arrow IPC streams, as Kaggle's relay sends
them; Series as lists; numpy scalars as numbers) and its JSON reply; a reply may be a polars or
a pandas DataFrame, as Kaggle's gateway accepts either. It imports what Kaggle's package
imports (grpc, protobuf, numpy, pandas, polars, pyarrow; tests/test_faults.py compares the
two), so that an image without one of them fails here as it would on Kaggle.

The server registers the notebook's endpoint listeners (`predict`) and answers calls on a
worker thread; the gateway connects to it, waiting through the server's start-up (Kaggle
allows 15 minutes), sends one row at a time, validates each answer, and writes
submission.parquet and result.json in its working folder.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import random
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.ipc
from google.protobuf.wrappers_pb2 import BytesValue

METHOD = "/kaggle_evaluation_standin.Relay/Send"
PORTS = (50051, *range(60053, 60063))  # Kaggle's


def _ports() -> tuple[int, ...]:
    """Kaggle's ports, or KAGGLE_STANDIN_GRPC_PORTS ("first,last"): a test run with several
    workers (pytest -n) gives each its own range, so that their gateways never meet."""
    spec = os.environ.get("KAGGLE_STANDIN_GRPC_PORTS")
    if not spec:
        return PORTS
    first, last = (int(x) for x in spec.split(","))
    return tuple(range(first, last + 1))
STARTUP_S = float(os.environ.get("KAGGLE_STANDIN_STARTUP_S", 15 * 60))  # Kaggle's rule
calls: list[dict] = []  # one per call served here: its endpoint and the thread it ran on
servers: list[grpc.Server] = []  # every server started in this process (tests stop them)


def is_rerun() -> bool:
    return os.getenv("KAGGLE_IS_COMPETITION_RERUN") is not None


class GatewayError(RuntimeError):
    """The notebook broke the protocol (no answer, a wrong row, an invalid answer)."""


# ---------------------------------------------------------------- payloads


def _encode(obj):
    if isinstance(obj, pd.DataFrame):
        obj = pl.from_pandas(obj)
    if isinstance(obj, pl.DataFrame):
        table = obj.to_arrow()
        sink = pa.BufferOutputStream()
        with pyarrow.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return {"__arrow__": base64.b64encode(sink.getvalue().to_pybytes()).decode()}
    if isinstance(obj, pl.Series):
        return {"__series__": [obj.name, obj.to_list()]}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return [_encode(x) for x in obj]
    return obj


def _decode(obj):
    if isinstance(obj, dict) and "__arrow__" in obj:
        with pyarrow.ipc.open_stream(base64.b64decode(obj["__arrow__"])) as reader:
            return pl.from_arrow(reader.read_all())
    if isinstance(obj, dict) and "__series__" in obj:
        return pl.Series(*obj["__series__"])
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    return obj


def _message(data: bytes) -> BytesValue:
    return BytesValue(value=data)


# ---------------------------------------------------------------- the notebook's side


class InferenceServer:
    """Serves the notebook's endpoint listeners (plain module-level functions) over gRPC."""

    def __init__(self, *endpoint_listeners):
        for fn in endpoint_listeners:
            if not (inspect.isfunction(fn) and fn.__qualname__ == fn.__name__ and
                    fn.__name__ != "<lambda>"):
                raise ValueError("the inference server takes plain module-level functions "
                                 "(e.g. `predict`): no lambda, partial or bound method")
        self.listeners = {fn.__name__: fn for fn in endpoint_listeners}
        self.server: grpc.Server | None = None

    def _handle(self, message: BytesValue, context) -> BytesValue:
        return _message(self._reply(message.value))

    def _reply(self, request: bytes) -> bytes:
        call = json.loads(request)
        name = call["name"]
        calls.append({"name": name, "thread": threading.current_thread().name,
                      "main": threading.main_thread().name})
        if name == "__ping__":
            return b'{"ok": true}'
        if name not in self.listeners:
            return json.dumps({"error": f"No listener for {name} was registered"}).encode()
        try:
            out = self.listeners[name](*_decode(call["args"]))
            return json.dumps({"result": _encode(out)}).encode()
        except Exception as exc:  # reported to the gateway, which fails the submission
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()

    def _start(self) -> int:
        handler = grpc.method_handlers_generic_handler(
            METHOD.split("/")[1], {"Send": grpc.unary_unary_rpc_method_handler(
                self._handle, request_deserializer=BytesValue.FromString,
                response_serializer=BytesValue.SerializeToString)})
        for port in _ports():
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=1),
                                 handlers=[handler],
                                 options=[("grpc.max_receive_message_length", -1),
                                          ("grpc.max_send_message_length", -1),
                                          ("grpc.so_reuseport", 0)])
            try:
                server.add_insecure_port(f"[::]:{port}")
            except RuntimeError:  # taken
                continue
            server.start()
            self.server = server
            servers.append(server)
            return port
        raise RuntimeError(f"no free port among {_ports()}")

    def serve(self) -> None:
        """Start serving; in a scoring rerun, block forever (the gateway runs elsewhere and
        the notebook is stopped when it is done)."""
        self._start()
        if is_rerun():
            self.server.wait_for_termination()

    def run_local_gateway(self, data_paths=None) -> None:
        """Serve, and run this competition's gateway here against it (off a rerun)."""
        self._start()
        try:
            self._get_gateway_for_test(data_paths).run()
        finally:
            self.server.stop(0)

    def _get_gateway_for_test(self, data_paths=None):
        raise NotImplementedError


# ---------------------------------------------------------------- Kaggle's side


class Gateway:
    """Sends the test set to the inference server one row at a time; writes the submission."""

    answer_range = (0, 999)
    competition_dir = ""  # under /kaggle/input
    response_timeout_s: float | None = None

    def __init__(self, data_paths: tuple[str, ...] | None = None):
        self.data_paths = data_paths
        root = os.environ.get("AIMO_KAGGLE_INPUT") or "/kaggle/input"
        self.test_path = data_paths[0] if data_paths else os.path.join(
            root, self.competition_dir, "test.csv")

    def _connect(self):
        host = os.environ.get("KAGGLE_STANDIN_HOST") or (
            "inference_server" if is_rerun() else "localhost")
        end = time.monotonic() + STARTUP_S
        while True:
            for port in _ports():
                channel = grpc.insecure_channel(f"{host}:{port}")
                stub = channel.unary_unary(METHOD, request_serializer=BytesValue.SerializeToString,
                                           response_deserializer=BytesValue.FromString)

                def send(data: bytes, timeout=None, stub=stub) -> bytes:
                    return stub(_message(data), timeout=timeout).value

                try:
                    send(b'{"name": "__ping__", "args": []}', timeout=2)
                    return channel, send
                except grpc.RpcError:
                    channel.close()
            if time.monotonic() > end:
                raise GatewayError(f"the inference server did not start within {STARTUP_S:.0f} "
                                   "s (SERVER_NEVER_STARTED)")
            time.sleep(1.0)

    def run(self) -> None:
        """The whole test set; submission.parquet and result.json in the working folder."""
        try:
            rows = self._run()
        except Exception as exc:
            self._write_result(False, f"{type(exc).__name__}: {exc}")
            raise
        pl.DataFrame(rows, schema={"id": pl.String, "answer": pl.Int64}, orient="row"
                     ).write_parquet("submission.parquet")
        self._write_result(True, None)

    def _run(self) -> list[tuple[str, int]]:
        test = pl.read_csv(self.test_path, schema_overrides={"id": pl.String})
        seed = os.environ.get("KAGGLE_STANDIN_SEED")
        order = list(range(len(test)))
        random.Random(int(seed) if seed else None).shuffle(order)
        channel, send = self._connect()
        rows = []
        try:
            for i in order:
                row = test[i:i + 1]
                request = json.dumps({"name": "predict", "args": _encode(
                    [row[c] for c in row.columns])}).encode()
                reply = json.loads(send(request, timeout=self.response_timeout_s))
                if "error" in reply:
                    raise GatewayError(f"the notebook's predict raised (SERVER_RAISED_EXCEPTION)"
                                       f": {reply['error']}")
                rows.append(self._validate(_decode(reply["result"]), row["id"][0]))
        finally:
            channel.close()
        return rows

    def _validate(self, out, row_id: str) -> tuple[str, int]:
        if not isinstance(out, pl.DataFrame) or len(out) != 1:
            raise GatewayError(f"predict must return a one-row DataFrame, got {out!r}")
        if out.columns != ["id", "answer"]:
            raise GatewayError(f"predict's DataFrame has columns {out.columns}, not [id, answer]")
        answer, got_id = out["answer"][0], str(out["id"][0])
        lo, hi = self.answer_range
        if got_id != str(row_id):
            raise GatewayError(f"predict answered id {got_id} for row {row_id}")
        if isinstance(answer, bool) or not isinstance(answer, int) or not lo <= answer <= hi:
            raise GatewayError(f"answer {answer!r} for {row_id} is not an integer in {lo}..{hi}")
        return got_id, answer

    def _write_result(self, ok: bool, error: str | None) -> None:
        with open("result.json", "w") as f:
            json.dump({"Succeeded": ok, "ErrorDetails": error}, f)


def main(gateway_class) -> None:
    """`python -m kaggle_evaluation.aimo_3_gateway [test.csv]`: the gateway as a process of its
    own, as Kaggle runs it; exit code 1 when the submission failed."""
    try:
        gateway_class(tuple(sys.argv[1:]) or None).run()
    except Exception as exc:  # noqa: BLE001 - result.json has it; say it and fail
        print(f"gateway: {exc}", file=sys.stderr)
        sys.exit(1)
