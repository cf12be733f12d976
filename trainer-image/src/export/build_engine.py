"""Builds a TensorRT engine from an ONNX model with TensorRT's builder API.

Called by `ocellus-trainer export --format engine` with one JSON argument:
{onnx, engine, fp16, int8, imgsz, batch, dynamic}. With int8 the ONNX is a QDQ model: TensorRT
builds an explicit-precision engine from its scales, so no calibrator runs here.
Prints one JSON line: {"ok": true, ...} or {"error": "..."}.
"""
import json
import sys

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
        config.set_flag(trt.BuilderFlag.INT8)
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
