// The example page: sign-in token in, cases out. Configuration comes from the
// URL fragment so tokens never reach a server log:
// #token=<jwt>&gateway=<url>[&live=grpc-web|sse]. With `live`, the list
// follows WatchCases and re-reads itself whenever a case changes anywhere.
import { casebook, describe } from "./client";
import { follow, type Protocol } from "./live";
import { Case_Type, type Case } from "./gen/casebook/cases/v1/cases_pb";

const params = new URLSearchParams(location.hash.slice(1));
const gateway = params.get("gateway") ?? "http://127.0.0.1:8080";
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const tokenInput = $<HTMLInputElement>("token");
tokenInput.value = params.get("token") ?? "";
const api = casebook(gateway, () => tokenInput.value.trim() || undefined);

function show(error: unknown) {
  const { code, reason, message } = describe(error);
  $("error").textContent = `${code}${reason ? ` (${reason})` : ""}: ${message}`;
}

async function run(action: () => Promise<void>) {
  $("error").textContent = "";
  try {
    await action();
  } catch (error) {
    show(error);
  }
}

function row(item: Case, showDeleted: boolean): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.name = item.name;
  li.textContent = `${item.title}${item.deleteTime ? " (deleted)" : ""} `;
  const button = document.createElement("button");
  button.textContent = item.deleteTime ? "Undelete" : "Delete";
  button.onclick = () =>
    run(async () => {
      if (item.deleteTime) await api.cases.undeleteCase({ name: item.name });
      else await api.cases.deleteCase({ name: item.name, etag: item.etag });
      await refresh(showDeleted);
    });
  li.append(button);
  return li;
}

async function refresh(showDeleted: boolean) {
  const { cases } = await api.cases.listCases({ pageSize: 50, showDeleted });
  $("cases").replaceChildren(...cases.map((item) => row(item, showDeleted)));
  $("count").textContent = String(cases.length);
}

const showDeleted = () => $<HTMLInputElement>("show-deleted").checked;
$("whoami").onclick = () =>
  run(async () => {
    const me = await api.auth.whoAmI({});
    $("me").textContent = `${me.displayName} <${me.email}>`;
  });
$("create").onclick = () =>
  run(async () => {
    const title = $<HTMLInputElement>("title").value;
    await api.cases.createCase({ case: { title, type: Case_Type.QUESTION }, requestId: crypto.randomUUID() });
    await refresh(showDeleted());
  });
$("list").onclick = () => run(() => refresh(showDeleted()));

const live = params.get("live");
if (live === "grpc-web" || live === "sse") {
  void run(() => refresh(showDeleted()));
  void follow({
    gateway,
    token: () => tokenInput.value.trim() || undefined,
    protocol: live as Protocol,
    onChange: () => void run(() => refresh(showDeleted())),
    onState: (state) => ($("live").textContent = `${state} (${live})`),
  });
}
$("ready").textContent = "ready";
