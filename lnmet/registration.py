"""Arterial-to-venous registration with SimpleITK (the paper used DEEDS; any robust deformable
method serves, the issue asks for an affine stage then a deformable one).

Fixed image = venous (the reference), moving image = arterial. Both are first brought to a coarse
isotropic *registration grid* (``registration.working_spacing_mm``, Gaussian pre-smoothing against
aliasing, HU clamped to [-1000, 1500] so that metal/air do not dominate the histogram). Then:

1. affine stage: initialised as the identity when both series share a frame of reference (same
   scanner table position: the centring of ``CenteredTransformInitializer`` would shift phases that
   cover different z-ranges), otherwise by the centres of mass (moments); centre of rotation at the
   centre of the fixed image; Mattes mutual information, regular-step gradient descent with scales
   from physical shifts, multi-resolution (``shrink_factors``, ``smoothing_sigmas_mm``);
2. B-spline stage on top of it: control-point mesh of ``bspline_mesh_mm``, Mattes MI, L-BFGS-B,
   the same multi-resolution schedule.

Metric sampling is random with a fixed seed (``sampling_fraction`` of the voxels, at most
``max_samples`` per level) and the registration runs on one thread unless
``$PDAC_LN_REGISTRATION_THREADS`` asks for more (:func:`registration_threads`), so a run is
reproducible bit for bit, also where ITK's other filters are given more threads (a cohort worker
sets ``$ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` to its CPUs and still computes what the single-study
app computes). The
arterial phase is put on the fine working grid through the transform sampled every
``working_spacing_mm`` (:func:`displacement_field`), far cheaper than evaluating the B-spline at
every output voxel. The result is one composite transform mapping a
venous (fixed) physical point to the arterial (moving) point showing the same tissue:
``T(p) = affine(bspline(p))`` - SimpleITK's resampling convention, so
``lnmet.geometry.resample_image(arterial, grid, T)`` puts the arterial phase on any venous grid.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from lnmet.config import RegistrationSettings
from lnmet.geometry import working_grid
from lnmet.progress import Progress

log = logging.getLogger(__name__)

CLAMP_HU = (-1000.0, 1500.0)
HISTOGRAM_BINS = 32
DEFAULT_SEED = 20240601
REGISTRATION_THREADS = 1
"""Threads of the registration. ITK's multi-threaded Mattes MI metric adds the threads' partial sums
in the order they finish, so runs with several threads differ in round-off, and the optimisers can
take another path from it: on the tiny test study 4 runs with 2 threads gave 4 different transforms
(B-spline stage 14 or 19 iterations), and downstream node detections changed. One thread gives the
same transform every time (and was not slower on the shared 2-core machine: 21-26 s against 30-39 s).
Again with the capped sampling (``max_samples``): 3 runs with 2 threads, 3 different transforms (44-45 s);
2 runs with 1 thread, the same one (28 s); tiny study seed 7, loaded machine."""


class RegistrationError(RuntimeError):
    """The registration could not run (e.g. images without overlap); the message says why."""


@dataclass
class RegistrationResult:
    transform: sitk.Transform  # venous (fixed) point -> arterial (moving) point
    metrics: dict[str, float] = field(default_factory=dict)


THREADS_ENV = "PDAC_LN_REGISTRATION_THREADS"
"""The registration's own thread setting. Not ITK's global default, which cohort workers raise to
their CPUs: with it the registration of a cohort study differed from the single-study app's (a CI
run: one SEG voxel set apart on a tiny study)."""


def registration_threads() -> int:
    """The registration's thread count: ``$PDAC_LN_REGISTRATION_THREADS`` when set (a caller that
    chose speed over bit-for-bit reproducibility), else :data:`REGISTRATION_THREADS` (one: the same
    transform on every run and every machine)."""
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    return REGISTRATION_THREADS


def registration_image(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The image on its own extent at isotropic ``spacing_mm``: clamped, smoothed, float32.

    A fine image is first averaged over blocks of whole voxels up to half of ``spacing_mm``
    (``BinShrink``: cheap; a 0.7 mm CT becomes 1.4 mm), so that the Gaussian that the remaining
    change of resolution asks for runs on a quarter of the voxels; then it is resampled."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    factors = [max(1, int(spacing_mm / (2.0 * s) + 1e-6)) for s in img.GetSpacing()]
    if max(factors) > 1:
        img = sitk.BinShrink(img, factors)
    img = sitk.Clamp(img, sitk.sitkFloat32, CLAMP_HU[0], CLAMP_HU[1])
    sigmas = [0.5 * max(0.0, spacing_mm ** 2 - s ** 2) ** 0.5 for s in img.GetSpacing()]
    if max(sigmas) > 0.05:
        img = sitk.SmoothingRecursiveGaussian(img, sigmas)
    grid = working_grid(img, [spacing_mm] * 3)
    return sitk.Resample(img, grid, sitk.Transform(), sitk.sitkLinear, CLAMP_HU[0], sitk.sitkFloat32)


def _sampling_fraction(settings: RegistrationSettings, fixed: sitk.Image | None, shrink: int = 1) -> float:
    """``sampling_fraction``, lowered where the level has more voxels than ``max_samples`` allows."""
    if settings.max_samples is None or fixed is None:
        return settings.sampling_fraction
    voxels = float(np.prod([max(1, -(-n // shrink)) for n in fixed.GetSize()]))
    return min(settings.sampling_fraction, settings.max_samples / voxels)


def _method(settings: RegistrationSettings, seed: int, multi_resolution: bool = True,
            fixed: sitk.Image | None = None) -> sitk.ImageRegistrationMethod:
    """Mattes MI with seeded random sampling (at most ``max_samples`` per level, counted on ``fixed``)."""
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(_sampling_fraction(settings, fixed), seed)
    r.SetInterpolator(sitk.sitkLinear)
    if multi_resolution:
        shrink = list(settings.shrink_factors)
        r.SetShrinkFactorsPerLevel(shrink)
        r.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas_mm))
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        if settings.max_samples is not None and fixed is not None:
            r.SetMetricSamplingPercentagePerLevel([_sampling_fraction(settings, fixed, k) for k in shrink], seed)
    return r


def observe_progress(r: sitk.ImageRegistrationMethod, progress: Progress, stage: str, iterations: int,
                     levels: int) -> None:
    """Progress lines while ``r`` runs: each resolution level as it starts, the iteration and metric
    at most every few seconds (SimpleITK command observers; :class:`lnmet.progress.Progress`)."""
    r.AddCommand(sitk.sitkMultiResolutionIterationEvent,
                 lambda: progress.note(f"{stage} stage, level {r.GetCurrentLevel() + 1}/{levels}"))
    r.AddCommand(sitk.sitkIterationEvent,
                 lambda: progress.update(r.GetOptimizerIteration(), iterations,
                                         f"{stage} stage level {r.GetCurrentLevel() + 1}/{levels}, "
                                         f"metric {r.GetMetricValue():.4f}"))


def _centre(image: sitk.Image) -> tuple[float, float, float]:
    size = np.array(image.GetSize(), dtype=float)
    return image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0))


def initial_affine(fixed: sitk.Image, moving: sitk.Image, same_frame_of_reference: bool) -> sitk.AffineTransform:
    """Identity (same frame of reference) or centres of mass; centre of rotation at the fixed centre."""
    affine = sitk.AffineTransform(3)
    affine.SetCenter(_centre(fixed))
    if not same_frame_of_reference:
        shift = -CLAMP_HU[0]
        f = sitk.Cast(fixed, sitk.sitkFloat32) + shift  # non-negative mass for the moments
        m = sitk.Cast(moving, sitk.sitkFloat32) + shift
        centred = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        centred = sitk.AffineTransform(centred)
        offset = np.array(centred.TransformPoint(_centre(fixed))) - np.array(_centre(fixed))
        affine.SetTranslation(tuple(float(v) for v in offset))
    return affine


def _guarded(step, when: str):
    """``step()``; ITK's failure of the metric or optimiser (the volumes do not overlap, or the
    optimiser moved the arterial volume off the venous one) as a :class:`RegistrationError` saying
    when it happened and what to check, instead of ITK's raw multi-line exception."""
    try:
        return step()
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # ITK's last line: "ITK ERROR: <class>(<address>): <what>. <advice>..."; its first sentence says what.
        itk = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", lines[-1] if lines else type(exc).__name__)
        itk = itk.split(". ")[0].rstrip(".")
        raise RegistrationError(
            f"registration of the arterial to the venous volume failed {when}: {itk} "
            "(the two series must show the same body region of the same patient; check the chosen "
            "arterial and venous series)") from None


def register_phases(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings, *,
                    same_frame_of_reference: bool = True, seed: int = DEFAULT_SEED,
                    threads: int | None = None) -> RegistrationResult:
    """Register ``moving`` (arterial) to ``fixed`` (venous): affine then B-spline (module docstring)."""
    t0 = time.perf_counter()
    n_threads = threads or registration_threads()
    ws = settings.working_spacing_mm
    # The images on the registration grid with ITK's default threads (these filters split the image
    # into regions: the same result on any number of threads); the metric then on n_threads.
    f = registration_image(fixed, ws)
    m = registration_image(moving, ws)
    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n_threads)
    try:
        metrics: dict[str, float] = {"working_spacing_mm": ws, "threads": float(n_threads)}
        progress = Progress("registration", log=log)

        affine = initial_affine(fixed, moving, same_frame_of_reference)
        probe = _method(settings, seed, multi_resolution=False, fixed=f)  # metric on the full registration grid
        probe.SetInitialTransform(affine, inPlace=False)
        metrics["metric_initial"] = _guarded(lambda: probe.MetricEvaluate(f, m), "at the start of registration")

        if settings.affine_iterations > 0:
            r = _method(settings, seed, fixed=f)
            r.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                       numberOfIterations=settings.affine_iterations,
                                                       relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
            r.SetOptimizerScalesFromPhysicalShift()
            r.SetInitialTransform(affine, inPlace=True)
            observe_progress(r, progress, "affine", settings.affine_iterations, len(settings.shrink_factors))
            _guarded(lambda: r.Execute(f, m), "during the affine stage")
            metrics["metric_affine"] = float(r.GetMetricValue())
            metrics["affine_iterations"] = float(r.GetOptimizerIteration())
            log.info("affine stage: MI %.4f -> %.4f (%s)", metrics["metric_initial"], metrics["metric_affine"],
                     r.GetOptimizerStopConditionDescription())

        composite = sitk.CompositeTransform([affine])
        if settings.bspline_iterations > 0:
            extent = [sz * sp for sz, sp in zip(f.GetSize(), f.GetSpacing())]
            mesh = [max(1, int(round(e / settings.bspline_mesh_mm))) for e in extent]
            bspline = sitk.BSplineTransformInitializer(f, mesh, 3)
            r = _method(settings, seed, fixed=f)
            r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=settings.bspline_iterations,
                                   maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000,
                                   costFunctionConvergenceFactor=1e7)
            r.SetMovingInitialTransform(affine)
            r.SetInitialTransform(bspline, inPlace=True)
            observe_progress(r, progress, "B-spline", settings.bspline_iterations, len(settings.shrink_factors))
            _guarded(lambda: r.Execute(f, m), "during the B-spline stage")
            metrics["metric_bspline"] = float(r.GetMetricValue())
            metrics["bspline_iterations"] = float(r.GetOptimizerIteration())
            metrics["bspline_mesh"] = float(np.prod(mesh))
            log.info("B-spline stage (mesh %s): MI -> %.4f (%s)", "x".join(map(str, mesh)),
                     metrics["metric_bspline"], r.GetOptimizerStopConditionDescription())
            composite.AddTransform(bspline)

        probe = _method(settings, seed, multi_resolution=False, fixed=f)
        probe.SetInitialTransform(composite, inPlace=False)
        metrics["metric_final"] = _guarded(lambda: probe.MetricEvaluate(f, m), "after registration")
        metrics["seconds"] = time.perf_counter() - t0
        return RegistrationResult(transform=composite, metrics=metrics)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)


def displacement_field(transform: sitk.Transform, grid: sitk.Image, spacing_mm: float) -> sitk.Transform:
    """``transform`` sampled as a displacement field about ``spacing_mm`` apart over ``grid``'s voxel
    centres (first to last, so every point of ``grid`` lies between samples), linearly interpolated.

    Resampling a fine grid through the field evaluates the B-spline once per sample instead of once
    per output voxel (about 8 times fewer from 1.5 mm to 3 mm); the control points are
    ``bspline_mesh_mm`` apart, so between samples a few mm apart the transform is all but linear
    (differences of the order of 0.01 mm)."""
    counts, spacing = [], []
    for n, s in zip(grid.GetSize(), grid.GetSpacing()):
        extent = (n - 1) * s
        m = max(2, int(math.ceil(extent / spacing_mm - 1e-6)) + 1) if extent > 0 else 1
        counts.append(m)
        spacing.append(extent / (m - 1) if m > 1 else s)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, counts, grid.GetOrigin(),
                                              spacing, grid.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def warp_labels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None) -> sitk.Image:
    """Labels of the moving (arterial) image brought onto ``reference`` through ``transform``
    (nearest neighbour, so label values stay exact)."""
    tx = transform if transform is not None else sitk.Transform()
    return sitk.Resample(labels, reference, tx, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def transform_points(transform: sitk.Transform | None, points_mm: np.ndarray) -> np.ndarray:
    """Apply a transform to ``[N, 3]`` LPS points (identity when ``transform`` is None)."""
    pts = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    if transform is None:
        return pts.copy()
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in pts])
