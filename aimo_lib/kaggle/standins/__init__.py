"""Stand-ins for Kaggle's evaluation packages, for rehearsals and tests off Kaggle.

Written from the documented contracts (docs/reference.md sections 3 and 4), not from
Kaggle's code: `kaggle_evaluation` (AIMO 2 and 3: an inference server around `predict`, a
gateway in another process reaching it over gRPC) and `aimo` (AIMO 1's in-process loop).
`aimo-kaggle rehearse` copies them into a Kaggle-like input folder when the competition's own
data is not given. They are not imported as part of aimo_lib.
"""
