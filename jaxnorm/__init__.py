"""jaxnorm: tune only the normalization layers of frozen (random, sparse) networks.

Models (`NormMLP`, `NormConvNet`, `TargetMLP`), the freezing guarantee
(`norm_mask`, `norm_only`, `partition`, `combine`), fitting of many seeds in
one compiled program split over every device (`FitSpec`, `fit_seeds`,
`seed_mesh`), checkpoints that let a fit resume (`Checkpoints`, `FitSlot`,
`Control`), second-order and distillation fitting (`lm_fit`, `fit_student`,
`linear_regime_norms`), norm-only classifiers on real data (`ClassifySpec`,
`train_classifier`), and the exact construction (`reconstruct`,
`reconstruct_batch`, exported with `norm_mlp_variables`). Experiments live in
`jaxnorm.runs` (library side) and `experiments/` (absl mains).
"""

from jaxnorm.checkpoint import Checkpoints
from jaxnorm.checkpoint import Control
from jaxnorm.checkpoint import FitSlot
from jaxnorm.checkpoint import Preempted
from jaxnorm.classify import ClassifySpec
from jaxnorm.classify import train as train_classifier

from jaxnorm.construct import BlockReport
from jaxnorm.construct import Reconstruction
from jaxnorm.construct import apply_frozen
from jaxnorm.construct import reconstruct
from jaxnorm.construct_batch import reconstruct_batch
from jaxnorm.distill import fit_student
from jaxnorm.distill import linear_regime_norms
from jaxnorm.domain import INPUT_DISTRIBUTIONS
from jaxnorm.domain import sample_inputs
from jaxnorm.export import frozen_weights
from jaxnorm.export import norm_mlp_variables
from jaxnorm.fit import ChunkReport
from jaxnorm.fit import FitResult
from jaxnorm.fit import FitSpec
from jaxnorm.fit import check_spec
from jaxnorm.fit import fit_seeds
from jaxnorm.fit import heldout_inputs
from jaxnorm.freeze import combine
from jaxnorm.freeze import norm_mask
from jaxnorm.freeze import norm_only
from jaxnorm.freeze import partition
from jaxnorm.models import NORM_KINDS
from jaxnorm.models import Affine
from jaxnorm.models import NormConvNet
from jaxnorm.models import NormMLP
from jaxnorm.models import TargetMLP
from jaxnorm.models import apply_target
from jaxnorm.models import init_target
from jaxnorm.models import sparse_he_normal
from jaxnorm.models import target_from_params
from jaxnorm.second_order import lm_fit
from jaxnorm.sharding import seed_mesh
from jaxnorm.validate import ConfigError

__version__ = "0.1.0"
