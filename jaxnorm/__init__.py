"""jaxnorm: tune only the normalization layers of frozen (random, sparse) networks.

Models (`NormMLP`, `TargetMLP`), the freezing guarantee (`norm_mask`,
`norm_only`, `partition`, `combine`), and fitting of many seeds in one
compiled program (`FitSpec`, `fit_seeds`). Experiments live in
`jaxnorm.runs` (library side) and `experiments/` (absl mains).
"""

from jaxnorm.domain import INPUT_DISTRIBUTIONS
from jaxnorm.domain import sample_inputs
from jaxnorm.fit import ChunkReport
from jaxnorm.fit import FitResult
from jaxnorm.fit import FitSpec
from jaxnorm.fit import check_spec
from jaxnorm.fit import fit_seeds
from jaxnorm.freeze import combine
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
from jaxnorm.validate import ConfigError

__version__ = "0.1.0"
