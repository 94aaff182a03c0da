"""Stand-in for Kaggle's `kaggle_evaluation` package (AIMO 2 and 3), written from the
documented contract, not from Kaggle's code:

- `AIMO2InferenceServer(predict)` / `AIMO3InferenceServer(predict)`; `predict` must be a plain
  module-level function named `predict` (no lambda, partial or bound method);
- in a rerun `server.serve()` blocks while the gateway sends the hidden problems (here: the
  CSV named by $KAGGLE_STANDIN_RERUN_CSV); otherwise `server.run_local_gateway((csv_path,))`;
- predict receives one polars Series per CSV column (`id`, `problem`, and `answer` if the CSV
  has it), from a worker thread, and returns a one-row DataFrame {"id", "answer": int};
- the first call has no deadline; the problems are shuffled; the gateway writes
  submission.parquet.
"""

import inspect
import os
import random
import threading

import polars as pl

calls: list[dict] = []  # one per predict call: the thread it ran on and what it returned


class InferenceServer:
    answer_range = (0, 999)

    def __init__(self, predict_fn):
        ok = (inspect.isfunction(predict_fn) and predict_fn.__name__ == "predict"
              and predict_fn.__qualname__ == "predict")
        if not ok:
            raise ValueError("the inference server takes a plain module-level function named "
                             "`predict` (no lambda, partial or bound method)")
        self.predict_fn = predict_fn

    def _call(self, box, columns):
        try:
            box["out"] = self.predict_fn(*columns)
        except Exception as exc:  # an error in predict fails the whole submission
            box["error"] = exc

    def serve(self):
        self._gateway(os.environ["KAGGLE_STANDIN_RERUN_CSV"])

    def run_local_gateway(self, data_paths=None):
        self._gateway(data_paths[0])

    def _gateway(self, path):
        df = pl.read_csv(path)
        order = list(range(len(df)))
        random.Random(0).shuffle(order)
        rows = []
        for i in order:
            columns = [df[name][i : i + 1] for name in df.columns]
            box: dict = {}
            worker = threading.Thread(target=self._call, args=(box, columns))
            worker.start()
            worker.join()
            if "error" in box:
                raise box["error"]
            out = box["out"]
            if not isinstance(out, pl.DataFrame) or out.columns != ["id", "answer"] or len(
                    out) != 1:
                raise ValueError("predict must return a one-row DataFrame with id and answer")
            answer = out["answer"][0]
            lo, hi = self.answer_range
            if not isinstance(answer, int) or not lo <= answer <= hi:
                raise ValueError(f"answer {answer!r} is not an integer in {lo}..{hi}")
            calls.append({"thread": worker.name, "main": threading.main_thread().name,
                          "id": out["id"][0], "answer": answer})
            rows.append({"id": out["id"][0], "answer": answer})
        pl.DataFrame(rows).write_parquet("submission.parquet")
