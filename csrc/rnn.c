/*
 * rnn.c - the simple (Elman) RNN cell: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or
 * relu, one elementwise pass per step. A training forward keeps h' in place of the input
 * projection; the derivative comes from it (tanh' = 1 - h'^2, relu' = [h' > 0]).
 * Recurrent dropout (lstmc.h rmasks): W_hh reads h times the mask, in the driver (seq.inc).
 */
#include <math.h>
#include "internal.h"
#include "vmath.h"

#include "rnn.inc"
#define LSTMC_F64
#include "rnn.inc"
#undef LSTMC_F64
