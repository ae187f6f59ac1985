// Live updates: follow WatchCases and call `onChange` after every change, so
// a list can re-read itself when another tab or device edits a case. Two
// ways to follow, both through the gateway:
//   - "grpc-web": Connect-ES's grpc-web transport, server streaming;
//   - "sse": GET /v1/cases:watch as Server-Sent Events, read with fetch
//     (EventSource cannot send an authorization header).
// Either way the stream's resume token is kept, and a dropped stream (token
// expiry, a deploy, a slow network) reconnects with it: no change is missed
// and none arrives twice.
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { CaseService } from "./gen/casebook/cases/v1/cases_pb";

export type Protocol = "grpc-web" | "sse";

export interface Follow {
  gateway: string;
  token: () => string | undefined;
  protocol: Protocol;
  /** A case changed (its event, as JSON-ish fields we need). */
  onChange: (change: { case: string; kind: string }) => void;
  /** "live" once the stream is open, "reconnecting" after it dropped. */
  onState: (state: string) => void;
}

/** Follows the caller's case events until the page goes away. */
export async function follow(options: Follow): Promise<never> {
  let resumeToken = "";
  for (;;) {
    try {
      const messages = options.protocol === "sse" ? sse(options, resumeToken) : grpcWeb(options, resumeToken);
      for await (const message of messages) {
        resumeToken = message.resumeToken || resumeToken;
        options.onState("live");
        if (message.event) options.onChange(message.event);
      }
    } catch (error) {
      console.log(`watch dropped (${String(error)}); resuming`);
    }
    options.onState("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

interface Message {
  resumeToken: string;
  event?: { case: string; kind: string };
}

async function* grpcWeb(options: Follow, resumeToken: string): AsyncGenerator<Message> {
  const bearer: Interceptor = (next) => (request) => {
    const jwt = options.token();
    if (jwt) request.header.set("authorization", `Bearer ${jwt}`);
    return next(request);
  };
  const transport = createGrpcWebTransport({ baseUrl: options.gateway, interceptors: [bearer] });
  const cases = createClient(CaseService, transport);
  for await (const message of cases.watchCases({ resumeToken })) {
    yield {
      resumeToken: message.resumeToken,
      event: message.event && { case: message.event.case, kind: String(message.event.kind) },
    };
  }
}

async function* sse(options: Follow, resumeToken: string): AsyncGenerator<Message> {
  const headers: Record<string, string> = { accept: "text/event-stream" };
  const jwt = options.token();
  if (jwt) headers.authorization = `Bearer ${jwt}`;
  if (resumeToken) headers["last-event-id"] = resumeToken;
  const response = await fetch(`${options.gateway}/v1/cases:watch`, { headers });
  if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const field = (name: string) =>
        block
          .split("\n")
          .filter((line) => line.startsWith(`${name}: `))
          .map((line) => line.slice(name.length + 2))
          .join("\n");
      if (field("event") === "error") throw new Error(field("data"));
      const data = field("data");
      if (data) yield JSON.parse(data) as Message;
    }
  }
}
