"""The frozen base in 8 bits while a LoRA trains on it (train.quantize_base: int8), ai-toolkit's way of
fitting FLUX.1 on a 24 GB card: the UNet's or transformer's linear weights become int8 with a scale per
output channel (torchao's Int8WeightOnlyConfig: FLUX.1's transformer 23.8 GB -> 12 GB), the LoRA
beside them stays float32, and peft wraps the quantized layers (its TorchaoLoraLinear).

torchao rather than optimum-quanto or bitsandbytes: peft trains LoRAs on its layers (quanto's are no
peft target: ai-toolkit wrote its own LoRA for them), it runs on the CPU as on any CUDA GPU (so the
tests train through it), and it is PyTorch's own, released with it. Only training sees the 8-bit
weights: merging and drawing read the base as it is stored.
"""
import warnings

import torch

from stylemix.errors import StyleMixError

QUANTIZED_LORA_TYPES = ("lora",)  # peft's torchao layer takes plain LoRA; DoRA and LyCORIS read the full weight


def quantize_frozen(net: torch.nn.Module, kind: str, lora_type: str, device: torch.device) -> None:
    """Replace `net`'s linear weights by int8 ones in place, layer by layer on `device` (so the full-
    precision model is never there whole), before the LoRA is added."""
    if lora_type not in QUANTIZED_LORA_TYPES:
        raise StyleMixError(f"train.quantize_base = {kind} with lora.type = {lora_type}: peft trains only plain LoRA on an "
                            "8-bit base; set lora.type: lora or train.quantize_base: null")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_  # imported here: only this option needs torchao

    quantize_(net, Int8WeightOnlyConfig(), device=device)
    net.to(device)  # what is left: convolutions, norms, embeddings
    # peft warns at each quantized layer that merge() would fail without the quantizer's recipe; training
    # never merges into the 8-bit base (the saved LoRA is merged into the stored one).
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without", category=UserWarning)


def frozen_out_of_ddp(net: torch.nn.Module) -> None:
    """DDP broadcasts every weight from the first process at start, which int8 tensors cannot take
    part in; the frozen ones are the same in every process (loaded and quantized alike), so DDP
    leaves them out (and is spared sending FLUX.1's 12 GB). Called once the LoRA is added."""
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        net, [name for name, param in net.named_parameters() if not param.requires_grad])
