# cython: language_level=3
"""Branch-free exp, sigmoid and tanh that the C compiler can vectorise (no libm call).

exp: x = k*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by its Taylor series
(degree 7 for float, 13 for double: truncation below 2^-24 and 2^-53 relative), 2^k built
in the exponent bits. The rounding of x*log2(e) to the nearest integer k adds a magic
constant, so the integer sits in the low mantissa bits and no float->int conversion or floor
is needed. Results are limited to the range where e^x and 2^k are normal numbers; NaN
passes through (comparisons with NaN are false) and comes out NaN.

The float version is the gate passes' hot path. There, split into loops whose units overlap
(_lbr_row), the exps are throughput-bound on the two FMA-capable ports, so each takes as few
operations there as it can: the polynomial evaluated 5 fused multiply-adds deep (Estrin's
scheme for the high terms, Horner's for the last two, which keeps the rounding of the sum
near 1 as in Horner's), and x clamped to the range first by one max (or min) per bound.
The bounds come from exp_limits, read outside the loop: with literal bounds gcc emits a
compare and a blend per bound. Against a select on x after the fact, the previous form:
the same bits inside the range; T = 100, I = H, one core: AVX2 1.2-1.6% less time (B = 16,
H = 128; B = 1, H = 64; T = 1000, H = 32), AVX-512 the same at B = 16 and ~1% more at the
smallest shapes, where the clamp at the chain's start adds latency (gcc 12).

Error bound, absolute, against float64 libm (tests/test_activations.py checks it on a dense
grid; measured maxima 9.0e-8 and 2.2e-16, on every build):
  float:  sigmoid and tanh within 1e-7
  double: sigmoid and tanh within 5e-16
Relative accuracy is kept wherever the result is a normal number; below that (sigmoid of
x < -87 in float, x < -708 in double) the result is the tiny clamped value, not zero.
"""

from libc.math cimport copysign, copysignf, fabs, fabsf
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from grufast._types cimport real


cdef extern from *:
    """
    /* exp's range limits, read once where a gate pass starts (exp_limits). volatile, so the
       compiler cannot see them as constants: with a constant bound gcc (12, AVX2/AVX-512)
       vectorises the clamp x < lo ? lo : x as a compare and a blend, two operations on the
       FMA ports; with a loop-invariant value it is one max (or min) instruction, whose
       operand order keeps a NaN x. */
    static volatile float grufast_exp_limits_f[2] = {-87.3f, 88.0f};
    static volatile double grufast_exp_limits_d[2] = {-708.3, 709.0};
    """
    float grufast_exp_limits_f[2]
    double grufast_exp_limits_d[2]


cdef inline void exp_limits(real* lo, real* hi) noexcept nogil:
    """The range [lo, hi] where e^x and 2^k are normal numbers, for exp_approx's clamp. Read
    it outside the loop that calls exp_approx (a volatile read per call would stop gcc
    vectorising that loop)."""
    if real is float:
        lo[0] = grufast_exp_limits_f[0]
        hi[0] = grufast_exp_limits_f[1]
    else:
        lo[0] = grufast_exp_limits_d[0]
        hi[0] = grufast_exp_limits_d[1]


cdef inline real exp_in_range(real x) noexcept nogil:
    """e^x for lo <= x <= hi (exp_limits) or NaN."""
    cdef real t, kf, r, r2, p, scale
    cdef uint32_t b32
    cdef uint64_t b64
    if real is float:
        t = x * <float>1.44269504088896341 + <float>12582912.0
        kf = t - <float>12582912.0
        r = (x - kf * <float>0.693359375) - kf * <float>-2.12194440e-4
        # Estrin's scheme for the terms past r (their pairs and r^2 are independent), then
        # two Horner steps, so that what is added to 1 rounds once, as in Horner's scheme:
        # the chain from r to p is 5 fused multiply-adds deep instead of 7, as accurate.
        r2 = r * r
        p = (<float>(1.0 / 24.0) + r * <float>(1.0 / 120.0)) + r2 * (
            <float>(1.0 / 720.0) + r * <float>(1.0 / 5040.0))
        p = (<float>0.5 + r * <float>(1.0 / 6.0)) + r2 * p
        p = p * r + <float>1.0
        p = p * r + <float>1.0
        # p * 2^k with 2^k built in the exponent bits. (Adding k to p's exponent bits
        # instead, an integer add, gave the same bits in range, but for a NaN x with a
        # payload the add carried into the exponent and made the NaN a finite number.)
        memcpy(&b32, &t, 4)
        b32 = (b32 + 127u) << 23
        memcpy(&scale, &b32, 4)
        p = p * scale
    else:
        t = x * 1.4426950408889634074 + 6755399441055744.0
        kf = t - 6755399441055744.0
        r = (x - kf * 6.93147180369123816490e-01) - kf * 1.90821492927058770002e-10
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        memcpy(&b64, &t, 8)
        b64 = (b64 + 1023u) << 52
        memcpy(&scale, &b64, 8)
        p = p * scale
    return p


cdef inline real exp_approx(real x, real lo, real hi) noexcept nogil:
    """e^x, x first clamped to [lo, hi] (exp_limits): e^hi for larger x and +inf, e^lo for
    smaller x and -inf, NaN for NaN (each clamp returns x when a comparison with NaN is
    false)."""
    x = hi if hi < x else x
    x = lo if x < lo else x
    return exp_in_range(x)


cdef inline real sigmoid(real x, real lo, real hi) noexcept nogil:
    return <real>1 / (<real>1 + exp_approx(-x, lo, hi))


cdef inline real exp_neg2abs(real x, real lo) noexcept nogil:
    """exp(-2|x|) <= 1, tanh's exponential (tanh_approx; the gate pass computes it apart).
    Its argument is at most 0, so only the lower clamp applies."""
    # fabsf for float: the double version would promote the whole loop to double.
    if real is float:
        x = <float>-2 * fabsf(x)
    else:
        x = -2 * fabs(x)
    x = lo if x < lo else x
    return exp_in_range(x)


cdef inline real tanh_from_exp(real e, real x) noexcept nogil:
    """tanh(x) from e = exp_neg2abs(x): tanh|x| = (1 - e) / (1 + e) with e <= 1, so no
    overflow and exact +-1 in the tails; the sign restored from x."""
    if real is float:
        return copysignf((<real>1 - e) / (<real>1 + e), x)
    else:
        return copysign((<real>1 - e) / (<real>1 + e), x)


cdef inline real tanh_approx(real x, real lo) noexcept nogil:
    return tanh_from_exp(exp_neg2abs(x, lo), x)
