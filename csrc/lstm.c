/*
 * lstm.c - the LSTM cell: one fused elementwise pass per step, forward and backward.
 * Nothing here knows about sequences, layers or directions: seq.c drives it.
 *
 * Forward, per row j and hidden unit u, with gate blocks i, f, g, o of H entries:
 *   z = gates[pos_j] (input projection) + gh[j] (recurrent projection) + bias
 *   i = sig(z_i)  f = sig(z_f)  g = tanh(z_g)  o = sig(z_o)
 *   c' = f c + i g        h' = o tanh(c')
 * Every forward leaves the activated gates in place of z (in the call's scratch, or in the
 * reserve a training forward keeps), and a training forward saves c (aux[0]) and c_prev
 * (aux[1]) beside them; derivatives are taken from outputs (sig' = y (1 - y),
 * tanh' = 1 - y^2).
 * Recurrent dropout (lstmc.h rmasks) changes only what gh reads, h times each block's mask:
 * the driver's products (seq.inc), not this pass.
 */
#include <math.h>
#include <string.h>
#include "internal.h"
#include "vmath.h"

#include "lstm.inc"
#define LSTMC_F64
#include "lstm.inc"
#undef LSTMC_F64
