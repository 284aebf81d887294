"""PyTorch-flavoured modules over lstmc's kernels (numpy arrays in and out)."""
from lstmc.nn import decoding, functional, utils
from lstmc.nn._tape import Composite, Tape, Tensor, tape
from lstmc.nn.cells import GRUCell, LSTMCell, RNNCell
from lstmc.nn.decoding import BeamSearch, GreedySearch
from lstmc.nn.layers import Dropout, Embedding, Linear, ReLU, Sequential, Sigmoid, Tanh
from lstmc.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from lstmc.nn.module import Module, Parameter
from lstmc.nn.rnn import GRU, LSTM, RNN
from lstmc.nn.streaming import StreamState

__all__ = ["Module", "Parameter", "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell",
           "StreamState", "GreedySearch", "BeamSearch", "decoding",
           "Composite", "tape", "Tape", "Tensor", "functional",
           "Linear", "Embedding", "Dropout", "ReLU", "Tanh", "Sigmoid", "Sequential", "utils",
           "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss"]
