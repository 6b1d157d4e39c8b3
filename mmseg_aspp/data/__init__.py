from .checks import CheckedLoading, DatasetError, check_loading
from .paths import check_dataset_paths

__all__ = ["CheckedLoading", "DatasetError", "check_dataset_paths", "check_loading"]
