"""jaxnorm: tune only the normalization layers of frozen (random, sparse) networks.

The engine, `fit(model, task, seeds)`: the norms (or any selection) of any
Flax model, linen or NNX, fitted to a `Regression` target or data set or a
`Classification` data set, one network per seed, all seeds in one compiled
program split over every device (batched as `choose_batching` picks: one `vmap`,
`lax.map`, or vmapped chunks of seeds); methods as objects (`Optax`, `LBFGS`,
`LevenbergMarquardt`, `Distill`, `Extract`) and start phases (`LinearRegime`,
`Construct`). Models (`NormMLP`, `TargetMLP`; the conv nets `NormResNet`, `NormVGG`,
`NormConvNet`, `ShiftConv`), the freezing
guarantee (`norm_mask`, `norm_filter`, `norm_only`, `partition`, `combine`),
the `fit_target` experiment's fits (`FitSpec`, `fit_seeds`, `seed_mesh`; `set_cpu_devices` splits
a CPU into one device per core), checkpoints that let a fit resume (`Checkpoints`, `FitSlot`,
`Control`), second-order and distillation fitting (`lm_fit`, `fit_student`,
`linear_regime_norms`, `widest_student`; `extract_mlp` reads an MLP with two hidden layers
out of queries of a black box), norm-only classifiers on real data (`ClassifySpec`,
`train_classifier`), and the exact construction (`reconstruct`,
`reconstruct_batch`, `reconstruct_conv` for CNNs (`construct_conv.Conv`, `Dense`, `AvgPool`,
`MaxPool`, `Flatten`), its thresholds `tolerances`, exported with `norm_mlp_variables`). The
experiments live outside the library, in `experiments/<name>/`.
"""

from jaxnorm.batching import choose as choose_batching
from jaxnorm.checkpoint import Checkpoints
from jaxnorm.checkpoint import Control
from jaxnorm.checkpoint import FitSlot
from jaxnorm.checkpoint import Preempted
from jaxnorm.classify import ClassifySpec
from jaxnorm.classify import train as train_classifier

from jaxnorm.construct import BlockReport
from jaxnorm.construct import Reconstruction
from jaxnorm.construct import apply_frozen
from jaxnorm.construct import Tolerances
from jaxnorm.construct import tolerances
from jaxnorm.construct import reconstruct
from jaxnorm.construct_batch import reconstruct_batch
from jaxnorm.construct_conv import ConvReconstruction
from jaxnorm.construct_conv import reconstruct_conv
from jaxnorm.convnets import NormConvNet
from jaxnorm.convnets import NormResNet
from jaxnorm.convnets import NormVGG
from jaxnorm.convnets import ResidualBlock
from jaxnorm.convnets import ShiftConv
from jaxnorm.distill import fit_student
from jaxnorm.distill import linear_regime_norms
from jaxnorm.distill import widest_student
from jaxnorm.extract import Extraction
from jaxnorm.extract import ExtractionError
from jaxnorm.extract import extract_mlp
from jaxnorm.domain import INPUT_DISTRIBUTIONS
from jaxnorm.domain import sample_inputs
from jaxnorm.export import frozen_weights
from jaxnorm.export import norm_mlp_variables
from jaxnorm.engine import ChunkReport
from jaxnorm.engine import FitResult
from jaxnorm.engine import fit
from jaxnorm.fitspec import FitSpec
from jaxnorm.fitspec import check_spec
from jaxnorm.fitspec import fit_seeds
from jaxnorm.fitspec import heldout_inputs
from jaxnorm.freeze import combine
from jaxnorm.freeze import norm_filter
from jaxnorm.freeze import norm_mask
from jaxnorm.freeze import norm_only
from jaxnorm.freeze import partition
from jaxnorm.models import NORM_KINDS
from jaxnorm.models import Affine
from jaxnorm.models import NormMLP
from jaxnorm.models import TargetMLP
from jaxnorm.models import apply_target
from jaxnorm.models import init_target
from jaxnorm.models import sparse_he_normal
from jaxnorm.models import target_from_params
from jaxnorm.methods import LBFGS
from jaxnorm.methods import Distill
from jaxnorm.methods import Extract
from jaxnorm.methods import LevenbergMarquardt
from jaxnorm.methods import Optax
from jaxnorm.methods import default_optimizer
from jaxnorm.second_order import lm_fit
from jaxnorm.starts import Construct
from jaxnorm.starts import LinearRegime
from jaxnorm.tasks import Classification
from jaxnorm.tasks import RandomMLP
from jaxnorm.tasks import Regression
from jaxnorm.sharding import seed_mesh
from jaxnorm.sharding import set_cpu_devices
from jaxnorm.validate import ConfigError

__version__ = "0.1.0"
