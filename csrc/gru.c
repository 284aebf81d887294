/*
 * gru.c - the GRU cell, both variants, one fused elementwise pass per step (two phases for
 * reset-before). Nothing here knows about sequences: seq.c drives it.
 *
 * Gate blocks r, z, n of H entries; zx = input projection + b_ih, zh = recurrent + b_hh:
 *   r = sig(zx_r + zh_r)    z = sig(zx_z + zh_z)    h' = (1 - z) n + z h
 *   reset-after (GRU):        n = tanh(zx_n + r * zh_n),        zh_n = W_hn h + b_hn
 *   reset-before:             n = tanh(zx_n + W_hn (r * h) + b_hn)
 * A training forward keeps r, z, n in place of the input projection, and in aux[0] zh_n
 * (reset-after) or r * h (reset-before, the input of W_hn's gradient GEMM).
 *
 * Backward, with dh the gradient of h':
 *   dz = dh (h - n)   dn = dh (1 - z)   dh_prev (direct) = dh z
 *   dn~ = dn (1 - n^2)                       (pre-activation of n)
 *   reset-after:  dr = dn~ zh_n; the recurrent-side n gradient is dn~ r, the input side dn~
 *   reset-before: d(r*h) = dn~ W_hn (driver GEMM between the phases), dr = d(r*h) h,
 *                 dh_prev (direct) += d(r*h) r
 *
 * Recurrent dropout (lstmc.h rmasks) is the driver's: each block's product reads h times its
 * mask. Here only reset-before's r * h changes, as Keras' GRUCell computes it: r times h
 * times n's mask (st->hp_n), so dr = d(r*h) h m_n and the direct term d(r*h) r m_n
 * (st->rmask_n); h' = (1 - z) n + z h keeps the unmasked h, as Keras' does.
 */
#include <math.h>
#include "internal.h"
#include "vmath.h"

#include "gru.inc"
#define LSTMC_F64
#include "gru.inc"
#undef LSTMC_F64
