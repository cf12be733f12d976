"""Benchmark peers behind FastAPI/uvicorn, answering POST /predict (multipart `file`) with
Ultralytics-style JSON:
  MODE=ort          onnxruntime InferenceSession (THREADS intra-op threads, default: all cores)
                    + OpenCV decode and letterbox (as Ultralytics' LetterBox) + OpenCV NMS
  MODE=ultralytics  Ultralytics YOLO(MODEL).predict (one call at a time: not thread-safe); MODEL is any
                    format Ultralytics loads (an .onnx, an OpenVINO export's folder, ...)
Usage: MODE=ort MODEL=model.onnx IMGSZ=640 THREADS=2 uvicorn --app-dir bench peer_server:app --port P [--workers N]
"""
import ast
import json
import os
import threading

import cv2
import numpy as np
from fastapi import FastAPI, File, UploadFile

MODE = os.environ.get("MODE", "ort")
MODEL = os.environ["MODEL"]
IMGSZ = int(os.environ.get("IMGSZ", "640"))
CONF, IOU = 0.25, 0.7
app = FastAPI()

if MODE == "ort":
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("THREADS") or os.cpu_count())
    session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    # Our exports' class names, or Ultralytics' (a Python dict literal) in an Ultralytics export.
    names = json.loads(meta["ocellus"])["names"] if "ocellus" in meta else list(ast.literal_eval(meta["names"]).values())

    def letterbox(img):
        h, w = img.shape[:2]
        r = min(IMGSZ / h, IMGSZ / w)
        nw, nh = round(w * r), round(h * r)
        if (nw, nh) != (w, h):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        left, top = (IMGSZ - nw) // 2, (IMGSZ - nh) // 2
        img = cv2.copyMakeBorder(img, top, IMGSZ - nh - top, left, IMGSZ - nw - left, cv2.BORDER_CONSTANT, value=(114, 114, 114))
        return img, r, left, top

    def predict(data):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        boxed, r, left, top = letterbox(img)
        x = boxed[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        (y,) = session.run(None, {"images": np.ascontiguousarray(x)})
        y = y[0].T  # anchors x (4 + nc)
        scores = y[:, 4:]
        cls = scores.argmax(1)
        conf = scores[np.arange(len(cls)), cls]
        keep = conf > CONF
        b, conf, cls = y[keep, :4], conf[keep], cls[keep]
        xywh = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 2], b[:, 3]], 1)
        idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), conf.tolist(), cls.tolist(), CONF, IOU) if len(conf) else []
        out = []
        for i in np.array(idx).reshape(-1)[:300]:
            x1, y1, bw, bh = xywh[i]
            x1, y1 = (x1 - left) / r, (y1 - top) / r
            out.append({"class": int(cls[i]), "name": names[int(cls[i])], "confidence": float(conf[i]),
                        "box": {"x1": float(max(0, x1)), "y1": float(max(0, y1)), "x2": float(min(w, x1 + bw / r)), "y2": float(min(h, y1 + bh / r))}})
        return out, [h, w]

else:
    from ultralytics import YOLO

    model = YOLO(MODEL, task="detect")
    lock = threading.Lock()

    def predict(data):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        # rect=False: for an ONNX model with a dynamic batch, Ultralytics assumes a dynamic input
        # size too and letterboxes a non-square image to the smallest stride-multiple rectangle,
        # which our exports (dynamic batch, fixed size) refuse. Square images are unaffected.
        with lock:
            r = model.predict(img, imgsz=IMGSZ, conf=CONF, iou=IOU, rect=False, verbose=False)[0]
        out = [{"class": int(c), "name": r.names[int(c)], "confidence": float(s), "box": dict(zip(("x1", "y1", "x2", "y2"), map(float, b)))}
               for b, s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())]
        return out, list(r.orig_shape)


@app.post("/predict")
def predict_route(file: UploadFile = File(...)):
    results, shape = predict(file.file.read())
    return {"images": [{"shape": shape, "results": results}], "metadata": {"imageCount": 1}}
