from kaggle_evaluation import InferenceServer


class AIMO2InferenceServer(InferenceServer):
    answer_range = (0, 999)
