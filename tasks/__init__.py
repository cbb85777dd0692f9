"""Stage logic of the xray-transfer pipeline: one module per DVC stage plus shared helpers."""

import os

# Keep TensorFlow's C++ start-up chatter (oneDNN, CPU feature notices) out of stage logs;
# must be set before TensorFlow is first imported. An explicit setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
