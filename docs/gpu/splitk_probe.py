"""Probe (run on the H200 box): does a vLLM engine with nestedfp hold split-K buffers before it captures
its CUDA graphs, and does any capture fall back? In-process engine, so kernels.split_k's state is visible."""
import os

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    from kernels import split_k

    llm = LLM(model="/root/models/llama-3.1-8b", load_format="dummy", skip_tokenizer_init=True, dtype="float16",
              seed=0, quantization="nestedfp", max_model_len=2048, gpu_memory_utilization=0.8, max_num_seqs=64)
    print("PROBE buffers", {str(k): (v[0].numel(), v[1].numel()) for k, v in split_k._BUFFERS.items()},
          "retired", len(split_k._RETIRED), "capture_fell_back", split_k._warned_capture, flush=True)
    out = llm.generate([{"prompt_token_ids": [1 + i] * 16} for i in range(4)],
                       SamplingParams(max_tokens=8, ignore_eos=True, detokenize=False), use_tqdm=False)
    print("PROBE generated", [len(o.outputs[0].token_ids) for o in out],
          "semaphores all zero", not bool(split_k.semaphores(split_k._BUFFERS and next(iter(split_k._BUFFERS.values()))[0].device).any()), flush=True)
