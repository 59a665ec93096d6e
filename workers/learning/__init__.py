"""The learning code shared by client and aggregator workers, pure with respect to transport.

Modules: models (factory, sizes), datasets (MNIST / CIFAR-10 on disk), partition (client splits),
privacy (DP accounting), training (local DP-SGD, evaluation), checkpoint (.npz on disk), fedavg.
Nothing is imported here, so importing a numpy-only module does not pull in torch.
"""
