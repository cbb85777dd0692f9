"""Stage logic of the xray-transfer pipeline: one module per DVC stage plus shared helpers."""

from xray.core.runtime import quiet_tensorflow

# Before anything imports TensorFlow: no C++ start-up lines, no known harmless warnings
# (XRAY_LOG_LEVEL=DEBUG keeps everything; an explicit TF_CPP_MIN_LOG_LEVEL wins).
quiet_tensorflow()
