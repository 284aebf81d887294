"""PyTorch-flavoured modules over lstmc's kernels (numpy arrays in and out)."""
from lstmc.nn.module import Module, Parameter
from lstmc.nn.rnn import LSTM, LSTMCell

__all__ = ["Module", "Parameter", "LSTM", "LSTMCell"]
