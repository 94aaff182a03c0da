"""The Kaggle side of aimo_lib: what a competition notebook calls, and what prepares it.

- serve: Kaggle's evaluation APIs behind one call (load_config, make_runner, serve, predict),
  and what the notebook finds on Kaggle by itself (competition, model).
- gateway: the local stand-in for Kaggle's gateway (LocalGateway), problem files, the score.
- cli: `aimo-kaggle` (wheelhouse, kernel folders, rehearse, push, status, output).
- wheelhouse: the offline wheels a notebook installs, resolved for the Kaggle image.
- rehearsal: the dress rehearsal of the scoring rerun, offline.
- standins/: stand-ins for Kaggle's `aimo` and `kaggle_evaluation` packages (rehearsals, tests).

Nothing is imported here: `import aimo_lib.kaggle.gateway` loads the gateway alone.
"""
