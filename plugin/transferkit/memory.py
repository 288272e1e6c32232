"""Per-device memory a training run needs: weights, gradients, optimizer states and activations, under a backend
(single process, DDP, FSDP, DeepSpeed ZeRO-1/2/3), a precision (fp32, bf16/fp16 autocast over fp32 weights, 16-bit
weights) and LoRA / QLoRA, so that `--dry_run` can say whether a model fits before the run allocates it.

The functions are pure (counts, a model shape, batch and length in; bytes out) apart from `count_parameters`, which
reads a model (a real one, or one built on the meta device by `meta_model`, which allocates nothing), and
`device_memory`, which asks the device. Sources:

- Weights, gradients, optimizer states and how ZeRO shards them: Rajbhandari et al. 2020, "ZeRO: Memory
  Optimizations Toward Training Trillion Parameter Models" (arXiv:1910.02054), section 3.1 and figure 1: mixed
  precision Adam holds 2 bytes/param of 16-bit weights, 2 of 16-bit gradients and K = 12 of optimizer state (fp32
  master weights, momentum, variance); ZeRO-1 divides the optimizer state, ZeRO-2 also the gradients, ZeRO-3 also
  the weights by the data-parallel degree. PyTorch FSDP full shard / shard-grad-op shard the same way (Zhao et al.
  2023, "PyTorch FSDP", arXiv:2304.11277). Hugging Face's "Model training anatomy" guide
  (https://huggingface.co/docs/transformers/model_memory_anatomy) gives the same per-parameter bytes for Trainer;
  `accelerate estimate-memory` uses weights x 4 for Adam training and leaves activations out (which this adds).
- DDP keeps its gradient buckets beside `param.grad` unless `gradient_as_bucket_view=True` ("the saved memory size
  will be equal to the total gradients size", torch.nn.parallel.DistributedDataParallel docs): another copy.
- QLoRA's 4-bit NF4 weights with double quantization: 4 bits + 0.127 bits of constants per parameter (Dettmers et
  al. 2023, "QLoRA", arXiv:2305.14314, section 3).
- Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
  (arXiv:2205.05198), section 4.1: a transformer layer saves s*b*h*(34 + 5*a*s/h) bytes in 16-bit with dropout,
  term by term (attention 11sbh + 5as^2b, MLP 19sbh, layer norms 4sbh). `layer_activation_bytes` keeps their terms
  with the element size of each tensor as PyTorch stores it (fp32: 4; under autocast the residual stream, layer
  norms and softmax stay fp32 and each matmul saves a 16-bit copy of its input), any MLP width, and the attention
  kernel: a fused kernel (FlashAttention, Dao et al. 2022, arXiv:2205.14135; PyTorch SDPA's flash /
  memory-efficient kernels) saves q, k, v, its output and a log-sum-exp instead of the s^2 score matrices.
  With full recomputation (`gradient_checkpointing`) a layer keeps only its input (section 4.2; Chen et al. 2016,
  "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174), and one layer is recomputed at a time.
- A dropout mask is 1 byte (bool) from CUDA's fused dropout, but on the CPU `torch.nn.functional.dropout` multiplies
  by a mask of the input's dtype (ATen `_dropout_impl`), so it costs the input's element size there.

Not counted: the CUDA context and allocator fragmentation, communication buffers (DDP's are counted; ZeRO's
reduce/prefetch buckets are not), the optimizer step's temporaries, and model-specific extras (relative-position
tensors, gated MLPs beyond their width).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

NF4_BYTES = (4 + 0.127) / 8  # QLoRA: NF4 + double-quantized constants, per parameter
_SHARDED = {  # backend: (weights, gradients, optimizer states) divided by the world size
    "single": (False, False, False),
    "ddp": (False, False, False),
    "fsdp_no_shard": (False, False, False),
    "zero0": (False, False, False),
    "zero1": (False, False, True),
    "zero2": (False, True, True),
    "fsdp_shard_grad_op": (False, True, True),
    "zero3": (True, True, True),
    "fsdp_full_shard": (True, True, True),
}
BACKENDS = tuple(_SHARDED)


@dataclass(frozen=True)
class ParameterCounts:
    """What the weights cost: `total` parameters stored at `weight_bytes` each (but `quantized` of them in 4-bit),
    `trainable` ones with a gradient and optimizer state, `matmul` ones in Linear/Conv1D weights (autocast saves a
    16-bit copy of those for the backward pass), and the largest layer's (ZeRO-3 / FSDP gather one at a time)."""

    total: int
    trainable: int
    weight_bytes: int = 4
    trainable_bytes: int = 4
    matmul: int = 0
    quantized: int = 0
    largest_layer: int = 0


@dataclass(frozen=True)
class TransformerShape:
    """The config fields the activation formula needs (BERT-style names; GPT-2's n_layer / n_embd / n_head too)."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0

    @classmethod
    def from_config(cls, config) -> TransformerShape:
        """Read a transformers config; a missing MLP width is the usual 4 x hidden."""

        def first(*names: str, default=None):
            values = (getattr(config, name, None) for name in names)
            return next((value for value in values if value is not None), default)

        hidden = first("hidden_size", "n_embd", "d_model")
        return cls(
            layers=first("num_hidden_layers", "n_layer", "num_layers"),
            hidden=hidden,
            heads=first("num_attention_heads", "n_head", "num_heads"),
            intermediate=first("intermediate_size", "n_inner", "ffn_dim", default=None) or 4 * hidden,
            vocab=first("vocab_size", default=0),
            hidden_dropout=float(first("hidden_dropout_prob", "resid_pdrop", "hidden_dropout", default=0.0)),
            attention_dropout=float(
                first("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", default=0.0)
            ),
        )


@dataclass(frozen=True)
class Precision:
    """How tensors are stored during training. `activation_bytes`: a matmul's saved input (2 under autocast or
    16-bit weights, 4 in fp32); `autocast`: bf16/fp16 autocast over higher-precision weights (fp32 residual stream,
    layer norms and softmax; a 16-bit copy of each matmul weight saved for backward)."""

    activation_bytes: int = 4
    autocast: bool = False

    @classmethod
    def of(cls, weight_bytes: int, mixed_precision: bool) -> Precision:
        """fp32 weights: fp32, or autocast with `mixed_precision` (Trainer's bf16/fp16); 16-bit weights: 16-bit."""
        if weight_bytes <= 2:
            return cls(activation_bytes=weight_bytes, autocast=False)
        return cls(activation_bytes=2, autocast=True) if mixed_precision else cls(activation_bytes=weight_bytes)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device, by kind; `total` is their sum (a conservative peak: in a step the gradients grow while
    the activations are freed, so the real peak is somewhat lower)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    backend: str
    world_size: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def optimizer_state_bytes(optim: str, trainable_bytes: int) -> float:
    """Optimizer state per trainable parameter for a Trainer `optim` name: Adam-family two moments in the
    parameter's dtype (torch AdamW), 8-bit optimizers 2 bytes, one-moment ones (Lion, Adagrad, RMSprop, SGD with
    momentum) one, Adafactor's factored moments about nothing per parameter."""
    name = optim.lower()
    if "8bit" in name:
        return 2
    if "adafactor" in name or name == "sgd":
        return 0
    if any(one in name for one in ("lion", "adagrad", "rmsprop", "sgd")):
        return trainable_bytes
    return 2 * trainable_bytes


def state_bytes(
    counts: ParameterCounts,
    backend: str,
    world_size: int,
    optimizer_bytes: float,
    deepspeed_mixed_precision: bool = False,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> tuple[int, int, int]:
    """(weights, gradients, optimizer states) per device. DeepSpeed stores 16-bit weights and gradients under its
    bf16/fp16 mode and keeps fp32 master weights with the optimizer state (ZeRO's K = 12 for Adam: 4 + 8); ZeRO-3 /
    FSDP full shard also hold one gathered layer at a time; DDP (world size > 1) adds its gradient buckets."""
    if backend not in _SHARDED:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    deepspeed = backend.startswith("zero")
    weight_bytes = 2 if deepspeed and deepspeed_mixed_precision else counts.weight_bytes
    grad_bytes = 2 if deepspeed and deepspeed_mixed_precision else counts.trainable_bytes
    master = 4 if deepspeed else 0  # ZeRO's optimizer keeps an fp32 partition of the weights (even in fp32 mode)
    weights = (counts.total - counts.quantized) * weight_bytes + counts.quantized * NF4_BYTES
    gradients = counts.trainable * grad_bytes
    optimizer = counts.trainable * (optimizer_bytes + master)
    split_weights, split_grads, split_optimizer = _SHARDED[backend]
    n = max(1, world_size)
    weights = weights / n + counts.largest_layer * weight_bytes if split_weights and n > 1 else weights
    gradients = gradients / n if split_grads else gradients * (2 if backend == "ddp" and n > 1 else 1)
    optimizer = optimizer / n if split_optimizer else optimizer
    if offload_optimizer:  # ZeRO-Offload: the optimizer state and fp32 master weights live in CPU memory
        optimizer = 0
    if offload_params:  # ZeRO-Infinity parameter offload: only the gathered layer is on the device
        weights = counts.largest_layer * weight_bytes
    return round(weights), round(gradients), round(optimizer)


def _dropout_mask_bytes(probability: float, input_bytes: int, device_type: str) -> int:
    """A dropout mask's bytes per element: none without dropout, a bool on CUDA, the input's dtype elsewhere."""
    if probability <= 0:
        return 0
    return 1 if device_type == "cuda" else input_bytes


def attention_kind(implementation: str | None, attention_dropout: float, device_type: str) -> str:
    """'eager' (the s^2 scores are saved), 'math' (PyTorch SDPA's fallback: saves them too, and on the CPU computes
    16-bit inputs in fp32) or 'fused' (flash / memory-efficient kernels: no s^2 tensor). PyTorch's CPU flash
    kernel has no dropout, so SDPA with attention dropout in training falls back to math on the CPU."""
    implementation = implementation or "eager"
    if implementation == "eager":
        return "eager"
    if implementation == "sdpa" and device_type != "cuda" and attention_dropout > 0:
        return "math"
    return "fused"


def layer_activation_bytes(
    shape: TransformerShape, batch: int, length: int, precision: Precision, attention: str, device_type: str
) -> int:
    """Bytes one transformer layer saves for backward: Korthikanti et al. 2022 section 4.1, term by term, with the
    element size of each saved tensor. s, b, h, a, i = length, batch, hidden, heads, MLP width."""
    s, b, h, a, i = length, batch, shape.hidden, shape.heads, shape.intermediate
    e = precision.activation_bytes
    residual = 4 if precision.autocast else e  # the residual stream and layer-norm inputs
    softmax = 4 if precision.autocast else e  # softmax runs in fp32 under autocast
    qkv_input_copies = 3 if precision.autocast else 1  # separate q/k/v projections each save their own cast input
    hidden_mask = _dropout_mask_bytes(shape.hidden_dropout, e, device_type)
    sbh, sbi = s * b * h, s * b * i
    linear_inputs = sbh * e * (qkv_input_copies + 2) + sbi * e  # q/k/v, output projection, MLP in, MLP out
    mlp_activation_input = sbi * e  # GeLU's input
    layer_norms = 2 * sbh * residual
    masks = 2 * sbh * hidden_mask  # after the attention output and after the MLP
    if attention == "fused":
        core = 4 * sbh * e + 4 * b * a * s + b * s * s * e  # q, k, v, output; fp32 log-sum-exp; the padding mask
    else:
        inner = 4 if attention == "math" and device_type != "cuda" else e  # CPU math SDPA upcasts 16-bit to fp32
        probs_softmax = 4 if attention == "math" and device_type != "cuda" else softmax
        attn_mask = _dropout_mask_bytes(shape.attention_dropout, probs_softmax, device_type)
        # the matmul with v saves the probabilities it gets: the softmax output itself, unless dropout or an
        # autocast cast made a new tensor of them
        copy = inner if shape.attention_dropout > 0 or inner != probs_softmax else 0
        core = 3 * sbh * inner + a * s * s * b * (probs_softmax + copy + attn_mask)  # q, k, v; the scores
    return linear_inputs + mlp_activation_input + layer_norms + masks + core


def head_activation_bytes(
    shape: TransformerShape,
    batch: int,
    length: int,
    precision: Precision,
    head: str,
    device_type: str = "cpu",
    logit_fraction: float = 1.0,
) -> int:
    """Bytes held outside the layers: the embeddings' layer-norm input, and an LM head's transform and logits
    (the logits in the compute dtype, and cross-entropy's fp32 log-softmax; a causal LM's loss first upcasts the
    logits to fp32: one more copy), plus the first backward step's fp32 gradients of the log-probabilities and of
    the logits, which exist while every saved tensor is still held (measured: the step's peak is there for a
    30k vocabulary). `logit_fraction`: share of positions the head projects (a sparse MLM head)."""
    e, sbh = precision.activation_bytes, length * batch * shape.hidden
    residual = 4 if precision.autocast else e
    embeddings = sbh * residual + sbh * _dropout_mask_bytes(shape.hidden_dropout, residual, device_type)
    if head not in ("masked_lm", "causal_lm"):
        return embeddings  # a classifier's pooled (batch x hidden) tensors are negligible
    per_logit = e + 4 + 2 * 4 + (4 if head == "causal_lm" else 0)
    logits = round(length * batch * logit_fraction) * shape.vocab * per_logit
    return embeddings + 4 * sbh * e + logits


def activation_bytes(
    shape: TransformerShape,
    batch: int,
    length: int,
    precision: Precision,
    attention: str = "eager",
    device_type: str = "cpu",
    checkpointing: bool = False,
    head: str = "classifier",
    logit_fraction: float = 1.0,
    matmul_parameters: int = 0,
) -> int:
    """Activation memory of one micro-batch at its peak (the end of the forward pass). With gradient
    checkpointing each layer keeps only its input and one layer's activations are recomputed at a time. Under
    autocast the 16-bit copies of the matmul weights, which autocast caches and the backward pass needs, count too."""
    layer = layer_activation_bytes(shape, batch, length, precision, attention, device_type)
    residual = 4 if precision.autocast else precision.activation_bytes
    layers = shape.layers * length * batch * shape.hidden * residual + layer if checkpointing else shape.layers * layer
    weight_copies = 2 * matmul_parameters if precision.autocast else 0
    head_bytes = head_activation_bytes(shape, batch, length, precision, head, device_type, logit_fraction)
    return layers + head_bytes + weight_copies


def estimate(
    counts: ParameterCounts,
    shape: TransformerShape,
    batch: int,
    length: int,
    backend: str = "single",
    world_size: int = 1,
    mixed_precision: bool = False,
    optim: str = "adamw_torch",
    offload_optimizer: bool = False,
    offload_params: bool = False,
    **activation_options,
) -> MemoryEstimate:
    """Per-device training memory for a model, a micro-batch and a backend (see `state_bytes` for DeepSpeed's
    own precision handling and ZeRO offload, `activation_bytes` for the options)."""
    deepspeed = backend.startswith("zero")
    precision = Precision.of(2 if deepspeed and mixed_precision else counts.weight_bytes, mixed_precision)
    optimizer_bytes = optimizer_state_bytes(optim, counts.trainable_bytes)
    weights, gradients, optimizer = state_bytes(
        counts, backend, world_size, optimizer_bytes, mixed_precision, offload_optimizer, offload_params
    )
    options = {"matmul_parameters": counts.matmul, **activation_options}
    activations = activation_bytes(shape, batch, length, precision, **options)
    return MemoryEstimate(weights, gradients, optimizer, activations, backend, max(1, world_size))


def _numel(parameter: torch.Tensor) -> int:
    """Logical parameter count: ZeRO-3 partitioned parameters report it as `ds_numel`, bitsandbytes' packed 4-bit
    ones through their quant_state's shape."""
    if hasattr(parameter, "ds_numel"):
        return int(parameter.ds_numel)
    quant_state = getattr(parameter, "quant_state", None)
    return int(torch.Size(quant_state.shape).numel()) if quant_state is not None else parameter.numel()


def _is_matmul(module: torch.nn.Module) -> bool:
    """Linear layers (and GPT-2's Conv1D): their weights are what autocast casts to 16-bit."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def count_parameters(model: torch.nn.Module) -> ParameterCounts:
    """ParameterCounts of a model, real or on the meta device. Weight and gradient bytes are the most common
    element sizes of the non-quantized and the trainable parameters."""
    total = trainable = matmul = quantized = 0
    weight_sizes: dict[int, int] = {}
    trainable_sizes: dict[int, int] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:  # a tied weight (an LM head sharing the word embeddings) is stored once
                matmul += _numel(parameter) if name == "weight" and _is_matmul(module) else 0
                continue
            seen.add(id(parameter))
            count = _numel(parameter)
            total += count
            if type(parameter).__name__ == "Params4bit":
                quantized += count
            else:
                weight_sizes[parameter.element_size()] = weight_sizes.get(parameter.element_size(), 0) + count
            if parameter.requires_grad:
                trainable += count
                trainable_sizes[parameter.element_size()] = trainable_sizes.get(parameter.element_size(), 0) + count
            if name == "weight" and _is_matmul(module):
                matmul += count
    largest = max((sum(_numel(p) for p in layer.parameters()) for layer in repeated_blocks(model)), default=0)
    return ParameterCounts(
        total=total,
        trainable=trainable,
        weight_bytes=max(weight_sizes, key=weight_sizes.get, default=4),
        trainable_bytes=max(trainable_sizes, key=trainable_sizes.get, default=4),
        matmul=matmul,
        quantized=quantized,
        largest_layer=largest,
    )


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer layers: the blocks of the model's largest non-empty ModuleList (by parameters, then length).
    What ZeRO-3 / FSDP gather one at a time, and what FSDP wraps one by one (distributed.fsdp_layer_classes)."""
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList) and len(module) > 0]
    if not lists:
        return []
    return list(max(lists, key=lambda blocks: (sum(_numel(p) for p in blocks.parameters()), len(blocks))))


def meta_model(config, model_class=None) -> torch.nn.Module:
    """The model a config describes, built on the meta device: shapes and dtypes without allocating or
    downloading any weights (accelerate's `init_empty_weights` does the same for parameters only)."""
    if model_class is None:
        from transformers import AutoModel

        model_class = AutoModel
    with torch.device("meta"):
        build = getattr(model_class, "from_config", None) or model_class._from_config
        return build(config)


def device_memory(device: torch.device | str) -> int | None:
    """Total memory of the device in bytes: a CUDA device's, else the machine's RAM (psutil, or /proc/meminfo's
    MemTotal); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def processes_sharing_memory(device: torch.device | str, world_size: int) -> int:
    """How many processes draw on one device's memory: one per GPU, but every local process shares the RAM."""
    if torch.device(device).type == "cuda":
        return 1
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
