"""fedbus's MNIST DP task as a Flower app: the learning code is fedbus's own, only the orchestration is Flower's."""
