"""Mean, standard deviation and Welch's t-test over seeds, with the standard library only (no SciPy)."""

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class WelchTest:
    t: float
    df: float
    p: float  # two-sided


def welch_t_test(a: list[float], b: list[float]) -> WelchTest:
    """Welch's unequal-variances t-test of the means of `a` and `b` (each of at least 2 values, not all equal).

    The two-sided p-value is the Student-t tail at Welch–Satterthwaite's degrees of freedom:
    P(|T| > |t|) = I_{df / (df + t²)}(df / 2, 1 / 2), the regularized incomplete beta function."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t-test needs at least 2 values in each sample")
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if var_a + var_b == 0:
        raise ValueError("Welch's t-test needs spread in at least one sample")
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    return WelchTest(t, df, regularized_incomplete_beta(df / (df + t * t), df / 2, 0.5))


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction of Numerical Recipes (betacf, evaluated with Lentz's method)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); beyond, use I_x(a, b) = 1 - I_{1-x}(b, a).
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_incomplete_beta(1 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        # Each m adds the even term m(b-m)x / ((a+2m-1)(a+2m)) and the odd term -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)).
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * fraction


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for multiple comparisons, in their order: the i-th smallest of m
    is multiplied by m - i + 1, and each kept at least as large as the one before it (R's p.adjust(p, "holm"))."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
