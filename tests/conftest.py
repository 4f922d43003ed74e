import os
import pathlib
import sys

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# oneDNN kernels: without them TensorFlow 2.21 on this kind of CPU runs the
# decoder's transposed convolutions about 8x slower.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
