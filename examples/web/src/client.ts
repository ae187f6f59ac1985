// The part to copy into your app: Casebook clients over the Connect protocol
// (plain HTTP POSTs of JSON; grpc-web works the same way with
// createGrpcWebTransport), with the Better Auth token attached to every call,
// and errors turned into { code, reason } so the UI can branch on the
// ErrorInfo reason.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/casebook/auth/v1/auth_pb";
import { CaseService } from "./gen/casebook/cases/v1/cases_pb";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb";

export interface Casebook {
  auth: Client<typeof AuthService>;
  cases: Client<typeof CaseService>;
}

/** Clients for the gateway at `baseUrl`; `token()` returns the current Better Auth JWT. */
export function casebook(baseUrl: string, token: () => string | undefined): Casebook {
  const bearer: Interceptor = (next) => (request) => {
    const jwt = token();
    if (jwt) request.header.set("authorization", `Bearer ${jwt}`);
    return next(request);
  };
  const transport = createConnectTransport({ baseUrl, interceptors: [bearer] });
  return { auth: createClient(AuthService, transport), cases: createClient(CaseService, transport) };
}

export interface CasebookError {
  code: string; // e.g. "unauthenticated"
  reason: string; // ErrorInfo.reason, e.g. "TOKEN_EXPIRED"
  message: string;
}

/** What the UI needs from any failed call. */
export function describe(error: unknown): CasebookError {
  const e = ConnectError.from(error);
  const [info] = e.findDetails(ErrorInfoSchema);
  return { code: Code[e.code].toLowerCase(), reason: info?.reason ?? "", message: e.rawMessage };
}
