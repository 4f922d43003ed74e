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


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeds():
  # Every test starts from the same seeds, whatever ran before it: Keras draws
  # unseeded initial weights from Python's random module.
  import tensorflow as tf
  tf.keras.utils.set_random_seed(0)
