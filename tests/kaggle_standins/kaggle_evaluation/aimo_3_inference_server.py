from kaggle_evaluation import InferenceServer


class AIMO3InferenceServer(InferenceServer):
    answer_range = (0, 99999)
