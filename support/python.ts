/**
 * The training tools' Python (Debian's packages); tests that need it are skipped, saying so, without it.
 * `TRAINING_PYTHON` names another (the GPU machine's, whose torch is in a virtual environment).
 */
export const PYTHON = Deno.env.get("TRAINING_PYTHON") || "/usr/bin/python3";

async function probe(): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(PYTHON, {
      args: ["-c", "import torch, onnx, numpy, PIL"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return success;
  } catch {
    return false;
  }
}

export const pythonReady = await probe();
if (!pythonReady) {
  console.warn(
    "skipping the tests that need the training tools' Python: apt-get install python3-torch python3-onnx python3-numpy python3-pil",
  );
}

export async function runPython(args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(PYTHON, {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { OPENBLAS_NUM_THREADS: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`python ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}\n${text}`);
  }
  return text;
}
