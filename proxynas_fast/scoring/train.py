"""Former name of `proxynas_fast.scoring.scorer_training` (renamed because "train" meant three things: the final
training of a searched network, `proxynas_fast.train`; the scorer-training CLI, `proxynas_fast.train_scorer`; and
this code). Code that imports it keeps working, with a DeprecationWarning naming the new module."""
import warnings

from .scorer_training import (PROGRESS_KEYS, ScorerRecipe, check_recipe, evaluate, load_progress,  # noqa: F401
                              progress_path_for, train_scorer)

warnings.warn("proxynas_fast.scoring.train is now proxynas_fast.scoring.scorer_training", DeprecationWarning,
              stacklevel=2)
