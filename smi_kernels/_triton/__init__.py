"""The Triton path (CUDA), and how its numerics on a GPU differ from the Triton interpreter's.

Without a GPU the tests run these kernels under the interpreter (TRITON_INTERPRET=1): numpy, one
IEEE-rounded float32 operation at a time. Compiled for sm_90 or sm_80 (triton 3.9, in the PTX):

- ``tl.sqrt`` is ``sqrt.approx.ftz.f32`` and float32 ``/`` is ``div.full.f32`` (at most 2 ulp);
  a division by a constant may become a product with a ``div.approx`` reciprocal. IEEE versions
  are ``tl.sqrt_rn`` and ``tl.math.div_rn``. ``tl.log`` is libdevice ``__nv_logf`` (~1 ulp).
- FMA contraction: ``a * b + c`` rounds once. Triton's ``enable_fp_fusion`` defaults to on up to
  3.9, and 3.9 warns that the default turns off in 3.10; op.py pins it on at every launch, so a
  Triton upgrade cannot move the results silently.
- ``tl.dot`` accumulates in the order of its FMA, mma.sync or wgmma tiling; the interpreter calls
  numpy's matmul. The interpreter also ignores ``input_precision``: TF32 (float32 at matmul
  precision "high") keeps 10 mantissa bits of each operand on the GPU only, so no CPU test
  exercises the TF32 tolerance. bfloat16/float16 products are exact and accumulate in float32 on
  both; the order of accumulation (and its rounding inside the tensor cores) differs.

Results are therefore not bit-identical between the interpreter and a GPU (nor across GPU
architectures or Triton versions). On one GPU with one config they are bitwise reproducible run
to run: every reduction has a fixed order (per-program slots and split-K partials, summed in
order) and no kernel uses atomics. Opt-in autotuning may pick another config in another process.

Tolerances. Those of docs/design.md, section 6 (float32 IEEE 1e-4, TF32 1e-3, 16-bit 2e-2) hold with
approximate arithmetic because each such op adds a relative error of a few 2^-24 to a value that is
then multiplied, divided or summed, and never subtracted from a nearly equal one, except in three
places written to avoid that cancellation. They stay accurate under approximate division, since what
they divide is already free of cancellation:

- m near 0: ``log(1 - rho^2 + eps) = log1p(eps - rho^2) = log(t) * x / (t - 1)`` (gram.py);
- positives near rho = +-1: ``1 - rho^2 = (1 - rho)(1 + rho)`` with
  ``1 -+ rho = ||zh_a -+ zh_b||^2 / 2`` (standardize.py): a relative error u in each entry of
  zh moves ``1 -+ rho`` by about u |zh_a -+ zh_b|, not by u;
- a large common offset: the second centring pass, which also removes the rounding of the mean.

Simulated in the interpreter: every float32 division result moved by up to 2 ulp and every sqrt by
up to 3 (random per entry, or all +, or all -), divisions by a power of two kept exact; worst
relative errors against float64 over 4 seeds (FMA contraction and dot order not simulated), and
for comparison the interpreter with the plain formula (log t; 1 - rho^2 of the rounded rho):

    case (float32)                          interpreter      simulated GPU    plain formula
    generic N=16 D=64: loss, gradient       7.4e-8, 1.4e-7   1.3e-6, 6.5e-7
    nearly orthogonal rows: L_red           1.4e-7           5.6e-7           0.9e-4 .. 1.8e-4
    b = a + 1e-3 noise, eps = 1e-6: L_align 7.2e-7           1.6e-6           6.7e-4 .. 2.3e-3
                     gradient of L_align    9.4e-5           3.9e-4           1.5e-2 .. 2.2e-2
    offsets 1e4..1e6: loss, gradient        1.9e-7, 1.3e-7   1.6e-6, 8.1e-7

Two results must be exact, not merely accurate, and ``/`` on the GPU does not promise it:

- ``x = z / a``, a the row's power of two. Off by up to 2 ulp per entry, offset rows lose their
  spread (simulated, offsets 1e4..1e6: loss 2.4e-3, gradient 3.2e-2).
- The second mean of an exactly constant row: after the first pass the row is a constant delta
  (a few ulp), and ``mu2 = (D delta) / D`` must return delta, or the row keeps a constant
  residual under the floor of s and its gradient (0 in the reference) reaches 1e4, against 5e-2
  on the other rows (simulated; exact divisions by D restore the 0).

Both take IEEE division, ``tl.math.div_rn`` (``div.rn.f32``): ``exact_div`` in standardize.py.
The interpreter divides exactly either way, so tests/test_exact_division.py compiles the kernel
for sm_90 and sm_80 without a GPU and checks those divisions in the PTX; on a GPU,
tests/test_numerics.py (large offsets, constant row) checks their effect.
"""
