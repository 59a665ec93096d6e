"""The learning code shared by client and aggregator workers, pure with respect to transport.

Modules: models (factory, sizes), datasets (MNIST, CIFAR-10, Fashion-MNIST on disk), builtin_tasks (the
built-in tasks on the public fedbus.Task), privacy (DP accounting), training (a task's local DP-SGD,
federated and central evaluation), checkpoint (.npz on disk), fedavg, robust. Client splits are
fedbus.partition.
Nothing is imported here, so importing a numpy-only module does not pull in torch.
"""
