/** Only for tools/evaluate.ts's import: remove once it imports support/python.ts. */
export * from "../support/python.ts";
