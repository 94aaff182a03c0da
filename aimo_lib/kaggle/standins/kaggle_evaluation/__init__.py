"""Stand-in for Kaggle's `kaggle_evaluation` package (AIMO 2 and 3), written from the documented
contract (docs/reference.md sections 3 and 4), not from Kaggle's code:

- `AIMO3InferenceServer(predict)`: `predict` must be a plain module-level function; it is
  called on a gRPC worker thread with one polars Series per CSV column and returns a one-row
  DataFrame {"id", "answer"}. `serve()` starts the server (in a scoring rerun it then blocks
  forever); `run_local_gateway((csv,))` serves and runs the gateway in this process.
- `AIMO3Gateway((csv,)).run()` (or `python -m kaggle_evaluation.aimo_3_gateway CSV`): connects
  to the server (host `inference_server` in a rerun, else localhost; ports 50051, 60053-60062),
  waiting for it to start for up to 15 minutes, sends the shuffled rows one at a time,
  validates each answer and writes submission.parquet and result.json where it runs.
"""
