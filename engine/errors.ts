/** Failures a task reports to its caller, as they cross the engine's boundary. */

/** The request's own fault (or the Hub's), with the status it answers with and the field it names. */
export class TaskError extends Error {
  constructor(
    readonly status: 400 | 403 | 404 | 413 | 422 | 502 | 503 | 504,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** The engine is gone (its worker died) or not started yet: the request may be retried shortly. */
export class EngineUnavailable extends Error {
  readonly code = "engine_unavailable";
}
