"""Data sources: any image data behind one interface, decoded only where it is taken.

`open_data(DataRef, split)` looks at a folder and opens the kind it finds:

- ``idx``: MNIST-format IDX files (wraps `engines.core.data.load_split`: same images, order and md5s);
- ``cifar10`` / ``cifar100``: the BINARY distributions, read through np.memmap (the pickled "python"
  version is refused: nothing is ever unpickled);
- ``imagefolder``: ``ROOT/<class>/*.png|jpg|jpeg|webp|bmp``, classes sorted as torchvision's ImageFolder;
- ``csv``: a flat folder of images listed in ``labels.csv`` (``file,label``).

Folders may hold ``train/`` and ``test/`` (or ``val/``, ``validation/``); otherwise one folder serves every
split. Everything a user can get wrong (missing files, empty classes, labels out of range, a classes
file that misses a folder) is found when the source is opened, before any work starts; a corrupt image
is found when it is decoded, and named.

Folder images are taken in a fixed, seeded, class-interleaved order (`interleaved_order`), so that the
first K images of a K-class folder cover all K classes and ``--n 8`` does not mean eight cats.
"""

from engines.core.sources.base import MAX_WORKERS as MAX_WORKERS
from engines.core.sources.base import WORKERS_FROM as WORKERS_FROM
from engines.core.sources.base import DataSource, describe
from engines.core.sources.cifar import CifarSource
from engines.core.sources.classes_file import ClassesFile
from engines.core.sources.detect import SPLIT_DIRS as SPLIT_DIRS
from engines.core.sources.detect import TEST_DIRS as TEST_DIRS
from engines.core.sources.detect import open_data
from engines.core.sources.folders import FolderSource
from engines.core.sources.idx import IdxSource
from engines.core.sources.listings import LABELS_CSV as LABELS_CSV
from engines.core.sources.order import ORDER_SEED, interleaved_order
from engines.core.sources.ref import KINDS, DataRef

__all__ = [
    "KINDS",
    "ORDER_SEED",
    "ClassesFile",
    "CifarSource",
    "DataRef",
    "DataSource",
    "FolderSource",
    "IdxSource",
    "describe",
    "interleaved_order",
    "open_data",
]
