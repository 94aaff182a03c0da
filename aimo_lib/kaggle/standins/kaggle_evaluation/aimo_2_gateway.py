"""The AIMO 2 gateway (stand-in): answers 0..999."""

import kaggle_evaluation.core as core


class AIMO2Gateway(core.Gateway):
    answer_range = (0, 999)
    competition_dir = "ai-mathematical-olympiad-progress-prize-2"
    response_timeout_s = None  # 30 min per problem on Kaggle; not enforced here


if __name__ == "__main__":
    core.main(AIMO2Gateway)
