"""PyTorch-flavoured modules over lstmc's kernels (numpy arrays in and out)."""
from lstmc.nn.module import Module, Parameter
from lstmc.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["Module", "Parameter", "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]
