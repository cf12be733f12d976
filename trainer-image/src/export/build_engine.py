"""Builds a TensorRT engine from an ONNX model with TensorRT's builder API.

Called by `ocellus-trainer export --format engine` with one JSON argument:
{onnx, engine, fp16, int8, calibration (raw float32 [N,3,S,S] file or null), imgsz, batch, dynamic}.
Prints one JSON line: {"ok": true, ...} or {"error": "..."}.
"""
import json
import sys

import numpy as np
import tensorrt as trt


def main():
    a = json.loads(sys.argv[1])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(a["onnx"], "rb") as f:
        if not parser.parse(f.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            print(json.dumps({"error": f"TensorRT could not parse the ONNX model: {errors}"}))
            return 2
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    s, b = a["imgsz"], max(1, a["batch"])
    inp = network.get_input(0)
    if a["dynamic"]:
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, 3, s, s), (max(1, b // 2), 3, s, s), (b, 3, s, s))
        config.add_optimization_profile(profile)
    if a["fp16"]:
        if not builder.platform_has_fast_fp16:
            print(json.dumps({"error": "this GPU has no fast FP16"}))
            return 2
        config.set_flag(trt.BuilderFlag.FP16)
    if a["int8"]:
        import torch  # device buffers for the calibrator (the trainer image ships PyTorch)

        data = np.fromfile(a["calibration"], dtype=np.float32).reshape(-1, 3, s, s)

        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                super().__init__()
                self.i = 0
                self.buf = None

            def get_batch_size(self):
                return b

            def get_batch(self, names):
                if self.i >= len(data):
                    return None
                chunk = data[self.i : self.i + b]
                if len(chunk) < b:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), axis=0)])
                self.i += b
                self.buf = torch.from_numpy(np.ascontiguousarray(chunk)).cuda()
                return [int(self.buf.data_ptr())]

            def read_calibration_cache(self):
                return None

            def write_calibration_cache(self, cache):
                pass

        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = Calibrator()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        print(json.dumps({"error": "TensorRT failed to build the engine (see its log above)"}))
        return 2
    with open(a["engine"], "wb") as f:
        f.write(engine)
    print(json.dumps({"ok": True, "tensorrt": trt.__version__, "bytes": engine.nbytes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
