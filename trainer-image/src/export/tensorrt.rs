//! TensorRT engines, placeholder replaced below.
