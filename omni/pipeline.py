"""`omni.load_pretrained(folder)`: a trained model folder as one object that generates every direction.

    pipe = omni.load_pretrained("runs/shapes/model")
    images = pipe.generate_images(["a red circle on the left"], seed=0)     # PIL images
    captions = pipe.caption(images)                                       # strings
    answers = pipe.answer(images, ["what color is the circle?"])
    texts = pipe.generate_text(["a blue"])
    parts = pipe.generate(["draw a red circle"])[0]      # strings and PIL images, in the model's order
    reply = pipe.chat([[("user", "draw a red circle on the left")]])[0]   # after fine-tuning on dialogues
    filled = pipe.inpaint(images[0], (0, 0, 16, 16), "a green square")

Images may be PIL images, paths, or tensors (3, H, W) in [-1, 1]; any mode or size is converted
to RGB at the VQ's resolution (shorter side resized, centre cropped). Results are seeded and
reproducible on a device: random draws happen on the model's device, so the same seed gives the same
output on the same kind of device (CPU and GPU outputs differ). No Lightning, no pickles: JSON and safetensors only (see `omni.checkpoint`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omni.checkpoint import ModelFolderError, check_release_parts, load_model, read_config
from omni.checks import check_number
from omni.data.images import load_rgb, to_pil, to_tensor
from omni.generate import (
    GENERATION_DEFAULTS,
    GENERATION_RULES,
    generate_interleaved,
    generate_text,
    images_ar,
    images_mask,
    seeded_generator,
)
from omni.grammar import Grammar, Prompt
from omni.grounding import (
    Grounded,
    box_ids,
    grounded_ids,
    ids_box,
    layout_parts,
    parse_grounded,
    phrase_text,
)
from omni.model import Transformer
from omni.tokenizers.export import VQFolderError, load_vq
from omni.tokenizers.text import TextTokenizer
from omni.tokenizers.vqgan import VQModel
from omni.vocab import Vocab

log = logging.getLogger("omni")
PLAN_ROOM = 40  # tokens a layout-first prompt keeps for its layout (a few names with their boxes)


@dataclass
class OmniPipeline:
    """A loaded model folder: the Transformer, its vocabulary, text tokenizer and VQ tokenizer."""

    model: Transformer
    vocab: Vocab
    tokenizer: TextTokenizer
    vq: VQModel
    generation: dict = field(default_factory=dict)
    folder: Path | None = None
    compile: bool = False
    """Run each sampling step compiled (`omni.generate.Decoder`): the first call of each batch shape
    compiles (seconds), later ones run faster; same outputs as uncompiled."""

    @property
    def device(self) -> torch.device:
        return self.model.output.weight.device

    @property
    def grid(self) -> int:
        """Image tokens per image."""
        return self.vq.config.grid**2

    @property
    def frame(self) -> tuple[int, int]:
        """(width, height) of the images the model reads and draws: the frame of its boxes."""
        return (self.vq.config.resolution, self.vq.config.resolution)

    @property
    def grammar(self) -> Grammar:
        return Grammar(self.vocab, self.model.config.text_first)

    def _option(self, name: str, value):
        """A sampling option: the call's value, else the folder's default, checked either way."""
        if value is None:
            return self.generation.get(name, GENERATION_DEFAULTS[name])  # checked when the folder was read
        return check_number(name.replace("_scale", ""), value, **GENERATION_RULES[name])

    # ------------------------------------------------------------------------------------------
    # Inputs

    def _text_ids(self, text: str, budget: int, what: str, phrase: bool = False) -> list[int]:
        """Token ids of `text` (a `phrase`: as grounded documents write one, `phrase_text`), cut
        (with a warning) to `budget` tokens."""
        if not isinstance(text, str):
            raise TypeError(f"{what} must be a string, got {type(text).__name__}")
        ids = self.tokenizer.encode(phrase_text(text) if phrase else text.strip())
        if len(ids) > budget:
            log.warning(
                "%s of %d tokens cut to the model's budget of %d: %r", what, len(ids), budget, text[:60]
            )
            ids = ids[:budget]
        return ids

    def _images(self, images, resolution: int | None = None) -> torch.Tensor:
        """PIL images, paths or tensors -> (B, 3, R, R) in [-1, 1] at `resolution` (default: the VQ's)."""
        if isinstance(images, (Image.Image, str, Path, torch.Tensor)) and not (
            isinstance(images, torch.Tensor) and images.ndim == 4
        ):
            images = [images]
        res = resolution or self.vq.config.resolution
        out = []
        for i, image in enumerate(images):
            if isinstance(image, torch.Tensor):
                if image.ndim != 3 or image.shape[0] != 3:
                    raise ValueError(
                        f"image {i}: a tensor image must be (3, H, W) in [-1, 1], got {tuple(image.shape)}"
                    )
                image = to_pil(image.clamp(-1, 1))[0]
            try:
                rgb = load_rgb(image)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"image {i} ({image if isinstance(image, (str, Path)) else 'given'}) "
                    f"cannot be read as an image: {e}"
                ) from e
            if rgb.size != (res, res):
                w, h = rgb.size
                if min(w, h) < 1 or max(w, h) / min(w, h) > 4:
                    log.warning(
                        "image %d is %dx%d: resized to %d px on its shorter side and centre-cropped",
                        i,
                        w,
                        h,
                        res,
                    )
            out.append(to_tensor(rgb, res))
        return torch.stack(out).to(self.device)

    def _read(self, images) -> tuple[torch.Tensor, list]:
        """Images to be read -> their codes (B, grid), and their pixels at the understanding
        encoder's resolution (a list of (3, R, R); Nones when the model reads codes)."""
        at_vq = self._images(images)
        codes = self.vq.encode(at_vq)
        encoder = self.model.understanding
        if encoder is None:
            return codes, [None] * len(codes)
        size = encoder.config.image_size
        return codes, list(at_vq if size == self.vq.config.resolution else self._images(images, size))

    def preview(self, image) -> Image.Image:
        """An input image as the model sees it: RGB at the VQ's resolution."""
        return to_pil(self._images([image]))[0]

    def read_mask(self, path: str | Path) -> np.ndarray:
        """An inpainting mask file -> (H, W) bool, True where a pixel is not black."""
        try:
            return np.asarray(load_rgb(path)).any(axis=-1)
        except (OSError, ValueError) as e:
            raise ValueError(f"mask {path} cannot be read as an image: {e}") from e

    def _generator(self, seed: int) -> torch.Generator:
        return seeded_generator(seed, self.device)

    def _decode_ids(
        self, prompts: list[Prompt], max_new_tokens, temperature, seed, allowed=None
    ) -> list[list[int]]:
        """Each prompt's continuation as ids (`omni.generate.generate_text`; `allowed`: its ids)."""
        max_new = self._option("max_new_tokens", max_new_tokens)
        room = self.model.config.max_seq_len - max(len(p.ids) for p in prompts)
        if room < 1:
            raise ValueError(
                f"the prompt fills the model's {self.model.config.max_seq_len} positions; shorten it"
            )
        return generate_text(
            self.model,
            self.vocab,
            prompts,
            max_new_tokens=min(max_new, room),
            temperature=self._option("text_temperature", temperature),
            generator=self._generator(seed),
            compile=self.compile,
            allowed=allowed,
        )

    def _decode(self, prompts: list[Prompt], max_new_tokens, temperature, seed) -> list[str]:
        ids = self._decode_ids(prompts, max_new_tokens, temperature, seed)
        return [self.tokenizer.decode(row).strip() for row in ids]

    def _decode_grounded(self, prompts: list[Prompt], max_new_tokens, temperature, seed) -> list[Grounded]:
        """Continuations that may hold boxes (text and location tokens), read into text and boxes."""
        allowed = self.vocab.text_id_mask(self.device) | self.vocab.location_id_mask(self.device)
        ids = self._decode_ids(prompts, max_new_tokens, temperature, seed, allowed)
        return [parse_grounded(self.vocab, self.tokenizer.decode, row, self.frame) for row in ids]

    # ------------------------------------------------------------------------------------------
    # Every direction

    @torch.no_grad()
    def generate_images(
        self,
        prompts: str | Sequence[str],
        *,
        layout=None,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        seed: int = 0,
        batch_size: int = 32,
    ) -> list[Image.Image]:
        """Text -> images. An empty prompt generates unconditionally.

        `layout="plan"` draws layout-first (a grounded model): the model writes each prompt's
        layout, its objects' names with their boxes (`plan`), then draws the image conditioned on
        it. A list gives the layouts instead, one per prompt, each a `Grounded` (from `plan`) or
        (phrase, box) pairs with boxes (x0, y0, x1, y1) in pixels of `frame`: layout control.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if layout is None:
            captions = [self._t2i_ids(p) for p in prompts]
        else:
            layouts = (
                self.plan(prompts, seed=seed) if isinstance(layout, str) and layout == "plan" else layout
            )
            captions = self._planned(prompts, layouts)
        generator = self._generator(seed)
        out = []
        for i in range(0, len(captions), batch_size):
            chunk = captions[i : i + batch_size]
            codes = self._image_codes(chunk, steps, guidance, temperature, generator)
            out += to_pil(self.vq.decode(codes))
        return out

    @torch.no_grad()
    def plan(
        self, prompts: str | Sequence[str], *, temperature: float | None = None, seed: int = 0
    ) -> list[Grounded]:
        """Text -> the layout the model plans for its image: the objects' names with their boxes
        (in pixels of `frame`), as `Grounded` (text, [(phrase, box), ...]). Needs a grounded model."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.vocab.special("plan")  # a clear error for a model without grounding
        rendered = [
            self.grammar.prompt("plan", caption=self._text_ids(p, self._plan_room(), "prompt"))
            for p in prompts
        ]
        return self._decode_grounded(rendered, None, temperature, seed)

    def _plan_room(self) -> int:
        """Prompt tokens a layout-first prompt may use, keeping room for a layout of a few objects."""
        return self.grammar.text_room("plan", self.model.config.max_seq_len, self.grid, answer=PLAN_ROOM)

    def _planned(self, prompts: list[str], layouts) -> list[Prompt]:
        """Layout-first prompts that end at <boi>: the caption, the layout, <eos> <boi>."""
        if isinstance(layouts, str) or len(layouts) != len(prompts):
            raise ValueError(
                f'layout must be "plan" or one layout per prompt ({len(prompts)}), got {layouts!r}'[:200]
            )
        special = self.vocab.special
        out = []
        for prompt, layout in zip(prompts, layouts):
            objects = layout.boxes if isinstance(layout, Grounded) else list(layout)
            parts = layout_parts([(str(phrase), box) for phrase, box in objects])
            ids = grounded_ids(self.vocab, self.tokenizer.encode, parts, self.frame)
            caption = self._text_ids(prompt, self._plan_room(), "prompt")
            rendered = self.grammar.prompt(
                "plan", caption=caption, answer_start=ids + [special("eos"), special("boi")]
            )
            if len(rendered.ids) + self.grid > self.model.config.max_seq_len:
                raise ValueError(
                    f"the prompt and its layout of {len(objects)} objects leave no room for the image in the "
                    f"model's {self.model.config.max_seq_len} positions; shorten them"
                )
            out.append(rendered)
        return out

    @torch.no_grad()
    def ground(
        self, images, phrases: str | Sequence[str], *, seed: int = 0
    ) -> list[tuple[float, float, float, float]]:
        """Images and one phrase per image -> where the phrase is: a box (x0, y0, x1, y1) in pixels
        of `frame` (referring expressions; a grounded model)."""
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        codes, pixels = self._read(images)
        if len(phrases) != len(codes):
            raise ValueError(f"got {len(codes)} images but {len(phrases)} phrases; give one phrase per image")
        self.vocab.special("ground")  # a clear error for a model without grounding
        budget = self._text_room("ground")
        prompts = [
            self.grammar.prompt(
                "ground", image=c.tolist(), phrase=self._text_ids(t, budget, "phrase", phrase=True), pixels=p
            )
            for c, t, p in zip(codes, phrases, pixels)
        ]
        ids = self._decode_ids(prompts, 4, 0.0, seed, self.vocab.location_id_mask(self.device))
        return [ids_box(self.vocab, row, self.frame) for row in ids]

    @torch.no_grad()
    def describe_regions(self, images, boxes, *, seed: int = 0) -> list[str]:
        """Images and one box (x0, y0, x1, y1, pixels of `frame`) per image -> what is there (a
        grounded model's `region` task)."""
        codes, pixels = self._read(images)
        boxes = [boxes] if len(boxes) == 4 and not isinstance(boxes[0], (list, tuple)) else list(boxes)
        if len(boxes) != len(codes):
            raise ValueError(f"got {len(codes)} images but {len(boxes)} boxes; give one box per image")
        self.vocab.special("region")
        prompts = [
            self.grammar.prompt("region", image=c.tolist(), box=box_ids(self.vocab, b, self.frame), pixels=p)
            for c, b, p in zip(codes, boxes, pixels)
        ]
        return self._decode(prompts, None, 0.0, seed)

    @torch.no_grad()
    def grounded_caption(
        self, images, *, max_new_tokens: int | None = None, temperature: float | None = None, seed: int = 0
    ) -> list[Grounded]:
        """Images -> captions with a box after each object's name: `Grounded` (text, boxes in pixels
        of `frame`; a grounded model)."""
        codes, pixels = self._read(images)
        self.vocab.special("gcap")
        prompts = [self.grammar.prompt("gcap", image=c.tolist(), pixels=p) for c, p in zip(codes, pixels)]
        return self._decode_grounded(prompts, max_new_tokens, temperature, seed)

    @torch.no_grad()
    def caption(
        self, images, *, max_new_tokens: int | None = None, temperature: float | None = None, seed: int = 0
    ) -> list[str]:
        """Images -> captions (greedy by default)."""
        codes, pixels = self._read(images)
        prompts = [self.grammar.prompt("caption", image=c.tolist(), pixels=p) for c, p in zip(codes, pixels)]
        return self._decode(prompts, max_new_tokens, temperature, seed)

    @torch.no_grad()
    def answer(
        self,
        images,
        questions: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        seed: int = 0,
        grounded: bool = False,
    ) -> list[str] | list[Grounded]:
        """Images and one question per image -> answers.

        `grounded=True` (a grounded model): the model first finds the objects the question names,
        each with its box, then answers; returns `Grounded` (text: the answer, boxes: those
        objects, in pixels of `frame`)."""
        questions = [questions] if isinstance(questions, str) else list(questions)
        codes, pixels = self._read(images)
        if len(questions) != len(codes):
            raise ValueError(
                f"got {len(codes)} images but {len(questions)} questions; give one question per image"
            )
        task = "gvqa" if grounded else "vqa"
        budget = self._text_room(task)
        if grounded:
            self.vocab.special("ground")  # a clear error for a model without grounding
        prompts = [
            self.grammar.prompt(
                task, image=c.tolist(), question=self._text_ids(q, budget, "question"), pixels=p
            )
            for c, q, p in zip(codes, questions, pixels)
        ]
        if not grounded:
            return self._decode(prompts, max_new_tokens, temperature, seed)
        sep, device = self.vocab.special("sep"), self.device
        allowed = self.vocab.text_id_mask(device) | self.vocab.location_id_mask(device)
        allowed[sep] = True
        out = []
        for row in self._decode_ids(prompts, max_new_tokens, temperature, seed, allowed):
            chain, answer = (row[: row.index(sep)], row[row.index(sep) + 1 :]) if sep in row else (row, [])
            objects = parse_grounded(self.vocab, self.tokenizer.decode, chain, self.frame).boxes
            out.append(Grounded(self.tokenizer.decode([i for i in answer if i != sep]).strip(), objects))
        return out

    @torch.no_grad()
    def generate_text(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        seed: int = 0,
    ) -> list[str]:
        """Text -> its continuation (the prompt itself is not repeated)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        budget = self._text_room("lm")
        ids = [self.grammar.prompt("lm", answer_start=self._text_ids(p, budget, "prompt")) for p in prompts]
        return self._decode(ids, max_new_tokens, temperature, seed)

    @torch.no_grad()
    def generate(
        self,
        prompts: str | Sequence[str | Sequence],
        *,
        max_new_tokens: int | None = None,
        text_temperature: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        seed: int = 0,
    ) -> list[list[str | Image.Image]]:
        """Mixed-modal continuation: each prompt (a string, or a list of strings and images in
        order) is continued with text and images in the order the model chooses (it draws when it
        emits <boi>: `omni.generate.generate_interleaved`). Returns, per prompt, the new parts in
        order: strings and PIL images. `max_new_tokens` counts image tokens too (default: all the
        room the sequence has left)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rendered = [self._document_prompt(self._parts(p)) for p in prompts]
        options = dict(
            text_temperature=text_temperature, steps=steps, guidance=guidance, temperature=temperature
        )
        return self._interleave(rendered, max_new_tokens, seed, **options)

    @torch.no_grad()
    def chat(
        self,
        conversations: Sequence[Sequence[tuple[str, object]]],
        *,
        max_new_tokens: int | None = None,
        text_temperature: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        seed: int = 0,
    ) -> list[list[str | Image.Image]]:
        """The assistant's next turn of each conversation. A conversation is a list of turns
        `(role, content)`, role "user" or "assistant", content a string or a list of strings and
        images, ending with the user's turn (template: `omni.grammar`, `chat`). Returns, per
        conversation, the assistant's parts in order: strings and PIL images (it draws when it
        chooses to). Needs a model fine-tuned on conversations (configs/shapes/sft.yaml)."""
        mode = self.model.config.image_generation
        rendered = []
        for conversation in conversations:
            turns = []
            for role, content in conversation:
                parts = []
                for part in self._parts(content):
                    if isinstance(part, str):
                        parts.append(("text", self.tokenizer.encode(part)))
                    else:
                        parts.append(("image", self._read([part])[0][0].tolist()))
                turns.append((role, parts))
            rendered.append(self.grammar.chat_prompt(turns, mode))
        options = dict(
            text_temperature=text_temperature, steps=steps, guidance=guidance, temperature=temperature
        )
        return self._interleave(rendered, max_new_tokens, seed, **options)

    @staticmethod
    def _parts(content) -> list:
        """A prompt or turn as its parts: a string is one text part."""
        if isinstance(content, str):
            return [content]
        if not isinstance(content, (list, tuple)):
            raise ValueError(
                f"a prompt or turn is a string or a list of strings and images, got {type(content).__name__}; "
                f"one prompt of several parts is one list: generate([['a red', image, 'and']])"
            )
        return list(content)

    def _interleave(
        self, prompts: list[Prompt], max_new_tokens, seed, text_temperature, steps, guidance, temperature
    ) -> list[list[str | Image.Image]]:
        """`generate_interleaved` over rendered prompts, its ids decoded into strings and images."""
        longest = self.model.config.max_seq_len
        if max(len(p.ids) for p in prompts) >= longest:
            raise ValueError(f"a prompt fills the model's {longest} positions; shorten it")
        ids = generate_interleaved(
            self.model,
            self.vocab,
            prompts,
            self.grid,
            self.model.config.image_generation,
            # Each row stops where the sequence ends (generate_interleaved): the batch's longest
            # prompt must not shorten the others' turns.
            max_new_tokens=longest if max_new_tokens is None else max_new_tokens,
            text_temperature=self._option("text_temperature", text_temperature),
            top_k=self._option("top_k", None),
            mask_steps=self._option("mask_steps", steps),
            guidance=self._option("guidance_scale", guidance),
            temperature=self._option("temperature", temperature),
            generator=self._generator(seed),
        )
        out = []
        for row in ids:
            parts: list[str | Image.Image] = []
            for kind, content in self.grammar.parts(row):
                if kind == "image":
                    parts += to_pil(self.vq.decode(torch.tensor([content], device=self.device)))
                elif text := self.tokenizer.decode(content).strip():
                    parts.append(text)
            out.append(parts)
        return out

    def _document_prompt(self, parts: list) -> Prompt:
        """`<lm> <bos>` then the parts in order: text, and images as `<boi> codes <eoi>` (read
        through the understanding encoder when the model has one)."""
        ids = [self.vocab.special("lm"), self.vocab.special("bos")]
        images, pixels = [], []
        for part in parts:
            if isinstance(part, str):
                ids += self.tokenizer.encode(part)
                continue
            codes, read = self._read([part])
            ids.append(self.vocab.special("boi"))
            images.append((len(ids), len(ids) + codes.shape[1], True))
            ids += self.vocab.image_ids(codes[0]).tolist() + [self.vocab.special("eoi")]
            pixels += [px for px in read if px is not None]
        return Prompt(ids, images, pixels)

    @torch.no_grad()
    def inpaint(
        self,
        image,
        region,
        prompt: str = "",
        *,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        seed: int = 0,
    ) -> Image.Image:
        """Regenerate a region of an image conditioned on `prompt`.

        `region` is a box (x0, y0, x1, y1) in pixels of the VQ resolution, or a boolean mask
        (H, W) of that size; every code whose patch the region touches is regenerated. A box
        reaching outside the image is clipped (with a warning); one entirely outside is an error.
        For outpainting, give the area to replace (e.g. a border). A mask-mode model fills the
        region seeing every kept code; an ar-mode model fills it in raster order, seeing the kept
        codes above and to the left of each new one (`steps` applies to mask mode only).
        """
        codes = self.vq.encode(self._images([image]))[0]
        filled = self.inpaint_codes(
            codes, region, prompt, steps=steps, guidance=guidance, temperature=temperature, seed=seed
        )
        return to_pil(self.vq.decode(filled[None]))[0]

    @torch.no_grad()
    def inpaint_codes(
        self,
        codes: torch.Tensor,
        region,
        prompt: str = "",
        *,
        steps: int | None = None,
        guidance: float | None = None,
        temperature: float | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """`inpaint` on an image's codes (grid,): the codes outside the region come back unchanged."""
        keep = ~self._region_codes(region).flatten().to(codes.device)
        initial = torch.where(keep, codes, torch.full_like(codes, -1))[None]
        filled = self._image_codes(
            [self._t2i_ids(prompt)], steps, guidance, temperature, self._generator(seed), initial
        )
        return filled[0]

    def _t2i_ids(self, prompt: str) -> list[int]:
        """A text-to-image prompt's ids, within what the sequence leaves beside the image."""
        return self._text_ids(prompt, self._text_room("t2i"), "prompt")

    def _text_room(self, task: str) -> int:
        """Prompt text tokens that fit beside `task`'s template and image (omni.grammar)."""
        return self.grammar.text_room(task, self.model.config.max_seq_len, self.grid)

    def _image_codes(self, captions, steps, guidance, temperature, generator, initial=None) -> torch.Tensor:
        """Codes (B, grid) by the model's generation mode, with this folder's defaults for options
        left None; `captions` are t2i captions' ids, or prompts that end at <boi> (layout-first)."""
        guidance = self._option("guidance_scale", guidance)
        temperature = self._option("temperature", temperature)
        if captions and isinstance(captions[0], Prompt):
            # Layout-first prompts; guidance is against t2i's unconditional prompt (caption dropout).
            uncond = [self.grammar.prompt("t2i", caption=[])] * len(captions) if guidance > 0 else []
            prompts = list(captions) + uncond
        else:
            prompts = self.grammar.guided_t2i_prompts(captions, guidance)
        if self.model.config.image_generation == "mask":
            return images_mask(
                self.model, self.vocab, prompts, self.grid, steps=self._option("mask_steps", steps),
                guidance=guidance, temperature=temperature, generator=generator, initial=initial,
                compile=self.compile,
            )  # fmt: skip
        return images_ar(
            self.model, self.vocab, prompts, self.grid, guidance=guidance, temperature=temperature,
            top_k=self._option("top_k", None), generator=generator, initial=initial, compile=self.compile,
        )  # fmt: skip

    def _region_codes(self, region) -> torch.Tensor:
        """(side, side) bool: the codes a pixel box or mask touches."""
        res, f, side = self.vq.config.resolution, self.vq.config.downsample, self.vq.config.grid
        if isinstance(region, (tuple, list)) and len(region) == 4:
            x0, y0, x1, y1 = (int(round(v)) for v in region)
            if x1 <= x0 or y1 <= y0:
                raise ValueError(
                    f"inpaint box {tuple(region)} is empty: give (x0, y0, x1, y1) with x1 > x0, y1 > y0"
                )
            clipped = (max(0, x0), max(0, y0), min(res, x1), min(res, y1))
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                raise ValueError(f"inpaint box {tuple(region)} lies outside the {res}x{res} image")
            if clipped != (x0, y0, x1, y1):
                log.warning("inpaint box %s clipped to the %dx%d image: %s", tuple(region), res, res, clipped)
            mask = np.zeros((res, res), dtype=bool)
            mask[clipped[1] : clipped[3], clipped[0] : clipped[2]] = True
        else:
            mask = np.asarray(region.cpu() if isinstance(region, torch.Tensor) else region, dtype=bool)
            if mask.shape != (res, res):
                raise ValueError(f"inpaint mask must be {res}x{res} (the VQ resolution), got {mask.shape}")
            if not mask.any():
                raise ValueError("inpaint mask selects no pixel")
        return torch.from_numpy(mask.reshape(side, f, side, f).any(axis=(1, 3)))


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device that exists here; else a ValueError saying what to give instead."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; give cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is usable here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device}: MPS is not available here; use --device cpu")
    return device


def load_pretrained(
    folder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    compile: bool = False,
) -> OmniPipeline:
    """Load a model folder written by `omni train` (see omni.checkpoint for its layout);
    `compile=True` samples with compiled steps (`OmniPipeline.compile`)."""
    folder = Path(folder)
    device = usable_device(device)
    meta = read_config(folder)
    assets = check_release_parts(folder, meta)
    try:
        vq = load_vq(folder / "vq", device=device)
    except VQFolderError as e:
        raise ModelFolderError(str(e)) from e
    model = load_model(folder, device=device, dtype=dtype, config=meta["model"])
    return OmniPipeline(
        model, meta["vocab"], assets.tokenizer, vq, dict(meta["generation"]), folder, compile=compile
    )
