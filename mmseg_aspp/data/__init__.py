from .paths import check_dataset_paths
from .transforms import CheckedLoadAnnotations, CheckedLoadImageFromFile, DatasetError

__all__ = ["CheckedLoadAnnotations", "CheckedLoadImageFromFile", "DatasetError", "check_dataset_paths"]
