"""Defaults and constants shared across the pipeline, in one place.

Model presets live in :mod:`hydrapicker.model` (their registry); everything else a user
might wonder "where does this number come from?" about lives here.
"""

from __future__ import annotations

__all__ = [
    "GENERIC",
    "ANCHOR_STRIDE",
    "BATCH_SIZE",
    "CROP_SIZE",
    "PAD_TO",
    "PARTICLE_DIAMETER_PX",
    "MATCH_IOU",
    "MICROGRAPH_SUFFIXES",
    "COORDINATE_FORMATS",
    "FOCAL_GAMMA",
    "FOCAL_ALPHA",
    "LAMBDA_CLS",
    "LAMBDA_BIAS",
    "LAMBDA_SIZE",
    "SIZE_HEAD_LR_FACTOR",
    "SIZE_CORRECTION_RANGE",
    "SIZE_TOLERANCE",
    "SIZE_PASSES",
    "SIZE_MIN_SCORE",
    "SIZE_SAMPLE_MICROGRAPHS",
    "NMS_IOU",
    "WHOLE_BOXES",
    "REFINE_RADIUS",
    "MAX_REFINE_RADIUS",
    "MAX_UPSCALE",
    "MAX_RESCALED_PIXELS",
    "PICK_THRESHOLD",
    "PICK_ONE_PASS_SIZE",
    "PICK_TILE_SIZE",
    "CANDIDATE_FLOOR",
    "WATCH_POLL_S",
    "WATCH_IDLE_S",
    "PROGRESS_LINE_S",
    "PRETRAINED_MODEL",
    "LOCAL_NORM_WINDOW",
    "MALLOC_MMAP_RETURNED",
    "MALLOC_MMAP_THRESHOLD",
    "MALLOC_TRIM_THRESHOLD",
    "PREPARED_CACHE_SIZE",
]

#: IoU at or above which a pick matches a true particle (paper, section 4).
MATCH_IOU: float = 0.6

#: File suffixes read as micrographs, lower-case.
MICROGRAPH_SUFFIXES: tuple[str, ...] = (".mrc", ".mrcs", ".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: Coordinate formats, by name, with the file suffix each is written with.
#: Name of the generic (zero-shot) head.
GENERIC = "generic"

COORDINATE_FORMATS: dict[str, str] = {
    "star": ".star",
    "box": ".box",
    "cbox": ".cbox",
    "topaz": ".txt",
    "cs": ".cs",
    "csv": ".csv",
}

# --- geometry of the model's input (paper, sections 3-4) -------------------------------

#: Particle diameter, in pixels, that every micrograph is rescaled to before the model sees
#: it; also the square box edge used for anchor matching. Cost grows with its square.
PARTICLE_DIAMETER_PX: float = 40.0

#: Output grid stride of every head: one anchor per 16x16 input pixels.
ANCHOR_STRIDE: int = 16

#: Training crops: micrographs padded to at least PAD_TO px, rotated, cropped to CROP_SIZE.
PAD_TO: int = 520
CROP_SIZE: int = 368

#: Crops per mini-batch, all from one dataset.
BATCH_SIZE: int = 4

# --- loss, picking (paper, section 3.2; RetinaNet for the focal constants) --------------

#: Focal loss focusing exponent gamma (paper: 2) and the weight alpha of the particle class
#: (background gets 1 - alpha); 0.25 is RetinaNet's value for a 1:100 prior.
FOCAL_GAMMA: float = 2.0
FOCAL_ALPHA: float = 0.25

#: L = L_loc + LAMBDA_CLS * L_cls + LAMBDA_BIAS * L_bias. The paper does not give the lambdas;
#: LAMBDA_BIAS is per squared weight difference, summed over every head parameter.
LAMBDA_CLS: float = 1.0
LAMBDA_BIAS: float = 0.01

#: Weight of the size head's loss (L1 on a crop's mean log apparent size over its particle
#: cells), added to the detection loss when a model has a size head. Its targets span about
#: +-0.5 (the scale jitter), the offsets' about +-0.6. It shares no weight with the detector.
LAMBDA_SIZE: float = 1.0

#: The size head learns at this multiple of the learning rate: it shares nothing with the
#: picking heads, and at their rate it was still far from calibrated after a benchmark's
#: ~500 steps (a 1000-step pilot at 3x was, on crops).
SIZE_HEAD_LR_FACTOR: float = 3.0

# --- the size a user gives (hydrapicker.picking.size.estimate_diameter) ---------------------------

#: A model with a size head corrects the diameter a user gave by at most these factors (the
#: particle's apparent size is trusted only inside a range like the training's scale jitter).
SIZE_CORRECTION_RANGE: tuple[float, float] = (0.6, 1.6)

#: ... and only when the estimate is off by more than this factor (a smaller one is noise).
SIZE_TOLERANCE: float = 1.05

#: Network passes per sampled micrograph at most when the size is corrected: the given size, then
#: each corrected one (the estimate is re-read at the corrected scale, where it is most accurate);
#: the last pass picks (one micrograph alone) or the run is picked at the result (a run).
SIZE_PASSES: int = 3

#: The size is read in the cells whose best anchor scores at least this (0.1 let background in).
SIZE_MIN_SCORE: float = 0.3

#: ``pick`` reads the size once per run, pooled over at most this many micrographs spread over
#: the run (one micrograph's estimate alone can be far off; more cost a pass each, up to SIZE_PASSES).
SIZE_SAMPLE_MICROGRAPHS: int = 8

#: Picks whose boxes overlap a better pick by more than this IoU are suppressed. Two true
#: particles at least half a box apart in x overlap by at most 1/3.
NMS_IOU: float = 0.3

#: Drop picks whose box (the box size written, BOX's whole pixels included) reaches past the
#: micrograph's edge: RELION's extraction drops them anyway, and on real micrographs many sit on
#: the padding stripes at the border (50 of 848 default picks within 20 px of the edge on a
#: bundled β-gal micrograph). `pick --keep-edge-picks` keeps them. What it does to AP:
#: benchmarks/edge_picks.md.
WHOLE_BOXES: bool = True

#: After NMS each pick moves to the score²-weighted mean of the centres predicted by the anchors
#: within this fraction of the box size of it (:func:`hydrapicker.boxes.refine_centres`); 0 turns
#: it off. Chosen on the benchmark's validation micrographs, at the true and at wrong diameters
#: (benchmarks/scale_search.md records the comparison).
REFINE_RADIUS: float = 0.4

#: --refine-radius at most this many box sizes: farther, a pick would be pulled towards its
#: neighbours' anchors (two particles are at least about a box apart).
MAX_REFINE_RADIUS: float = 1.0

#: A micrograph is enlarged at most this much to make its particle the model's PARTICLE_DIAMETER_PX
#: (40 px) across: a particle under 5 stored px has no detail to pick, and enlarging creates none;
#: a larger factor is a wrong diameter or pixel size (--diameter-px 0.5, a 300 Å/px header).
MAX_UPSCALE: float = 8.0

#: ... and a rescaled micrograph has at most this many pixels: 400 MP holds a K3 super-resolution
#: frame (23040 x 16368, 377 MP) at scale 1, and is 1.6 GB per float32 copy, of which preparation
#: holds a few at once. Picking tiles the network's input (PICK_TILE_SIZE), not this array.
MAX_RESCALED_PIXELS: int = 400_000_000

#: Default score (probability) a pick needs to be written. Chosen for the shipped generic model
#: on its validation suite's threshold sweep (benchmarks/validate.py; MODEL_CARD.md gives the
#: table): the threshold that keeps the previous model's mean F1 with about half its picks on
#: real particle-free micrographs; lower thresholds gain a little F1 for many more such picks.
#: Focal-loss scores sit well below calibrated probabilities, so 0.5 loses most of the recall.
#: Re-derive it when the shipped model changes.
PICK_THRESHOLD: float = 0.2

#: Picking runs the network over a micrograph of up to PICK_ONE_PASS_SIZE rescaled px (each axis)
#: in one pass; a larger one in overlapping tiles of PICK_TILE_SIZE, with GroupNorm statistics
#: from its central PICK_TILE_SIZE window (hydrapicker.picking.inference). The network's memory
#: grows with the square it runs: a pass holds three of the trunk's full-size maps at a time
#: (hydrapicker.model), 256 MB each at 2048 px for the tiny preset. Tiles of 1536 px bring a
#: 4096² micrograph's peak RSS from 1.7 to 1.2 GB; the one-pass limit stays at 2048 so that
#: micrographs up to that size keep their whole-image statistics (and picks) as before.
#: `--tile PX` sets both (benchmarks/pick_speed.py memory gives the peaks).
PICK_ONE_PASS_SIZE: int = 2048
PICK_TILE_SIZE: int = 1536

#: Lowest score recorded in OUT/candidates/ by every pick run, whatever --threshold is, so that
#: `hydrapicker threshold` can re-write the outputs at any threshold down to this one without
#: running the network again. With the shipped generic model a bundled 1024² β-gal micrograph
#: keeps about 2,800 candidates after NMS at this floor (a 230 kB CSV).
CANDIDATE_FLOOR: float = 0.01

#: `pick --watch`: seconds between two looks at the folder. A micrograph is complete when its
#: size and modification time are the same on two looks in a row and it reads as a micrograph.
WATCH_POLL_S: float = 5.0

#: `pick --watch`: stop after this many seconds with nothing new (None: only on Ctrl-C).
WATCH_IDLE_S: float | None = None

#: When stderr is not a terminal (a batch job's log file), long loops write a plain progress line
#: (count, total, rate, time left; hydrapicker.progress) after each micrograph or epoch, but at
#: most one per this many seconds, and one at the end.
PROGRESS_LINE_S: float = 5.0

#: The shipped pretrained generic model, relative to the installed package folder.
PRETRAINED_MODEL: str = "assets/models/generic.pt"

# --- training data (hydrapicker.data) -----------------------------------------------------

#: Width of the local-normalisation window, in particle diameters (local beat global normalisation on real micrographs).
LOCAL_NORM_WINDOW: float = 3.0

#: Training and picking keep freed blocks up to this size in glibc's heap instead of unmapping
#: them (:mod:`hydrapicker.memory`), which makes CPU training steps and picking much faster for some
#: more peak memory (benchmarks/allocator.py measures both). 1 GiB covers every preset's
#: activations at batch 4 x 368² and most tiles.
MALLOC_MMAP_THRESHOLD: int = 1 << 30

#: ... except in a tiled pass over a large micrograph, whose buffers change size as it goes:
#: there blocks from this size up are mapped on their own and returned when freed, as glibc's
#: default does from 32 MiB (:func:`hydrapicker.memory.large_blocks_returned`).
MALLOC_MMAP_RETURNED: int = 32 << 20

#: ... and glibc returns free heap memory to the system only above this much (the most a C int holds).
MALLOC_TRIM_THRESHOLD: int = 2**31 - 1

#: Prepared (rescaled, normalised) micrographs kept in memory by a crop stream.
PREPARED_CACHE_SIZE: int = 8
