// The whole flow as a browser runs it, through the gateway with gRPC-web:
// sign up, log in (tokens land in HttpOnly cookies; the page only ever sees
// the CSRF token), open a work session, add tacos with options and a drink,
// place the order and follow it to CONFIRMED over WatchOrder, then show
// that a state change by cookie without x-csrf-token is refused.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/trellis/auth/v1/auth_pb";
import { CartService } from "./gen/trellis/cart/v1/cart_pb";
import { CatalogService } from "./gen/trellis/cart/v1/catalog_pb";
import { DeliveryType, OrderService, OrderStatus } from "./gen/trellis/order/v1/order_pb";
import { SessionService } from "./gen/trellis/session/v1/session_pb";

const gateway = new URLSearchParams(location.search).get("gateway") ?? "http://127.0.0.1:8080";
let csrfToken = "";

function step(text: string): void {
  const item = document.createElement("li");
  item.textContent = text;
  document.getElementById("steps")!.append(item);
}

function show(id: string, text: string, kind: "ok" | "refused"): void {
  const element = document.getElementById(id)!;
  element.textContent = text;
  element.className = kind;
}

// Cookies travel with every call; no token is ever in the page's hands.
const withCookies: typeof fetch = (input, init) => fetch(input, { ...init, credentials: "include" });
const sendCsrf: Interceptor = (next) => async (request) => {
  if (csrfToken) request.header.set("x-csrf-token", csrfToken);
  return next(request);
};
const transport = createGrpcWebTransport({ baseUrl: gateway, fetch: withCookies, interceptors: [sendCsrf] });
const bare = createGrpcWebTransport({ baseUrl: gateway, fetch: withCookies });

async function run(): Promise<void> {
  const auth = createClient(AuthService, transport);
  const unique = crypto.randomUUID().slice(0, 8);
  const email = `browser.${unique}@example.com`;
  const password = "Correct-Horse-9";
  const signedUp = await auth.signUp({ email, password, name: "Brenda", organizationName: `Browser Tacos ${unique}` });
  if (signedUp.accessToken || signedUp.refreshToken) throw new Error("tokens reached the page");
  step(`signed up ${email} (organization ${signedUp.organization?.slug})`);
  const loggedIn = await auth.login({ email, password });
  csrfToken = loggedIn.csrfToken;
  if (loggedIn.accessToken || !csrfToken) throw new Error("login: tokens in the body or no CSRF token");
  const me = await auth.whoAmI({});
  step(`logged in with cookies as ${me.user?.name} (${me.user?.email})`);

  const catalog = createClient(CatalogService, transport);
  const usd = (amountMinor: bigint) => ({ amountMinor, currency: "USD" });
  const taco = await catalog.createProduct({ sku: `TACO-${unique}`, name: "Taco al pastor", category: "taco", price: usd(350n), stock: 50n });
  const drink = await catalog.createProduct({ sku: `HORCHATA-${unique}`, name: "Horchata", category: "drink", price: usd(250n) });
  step("menu: taco al pastor, horchata");

  const sessions = createClient(SessionService, transport);
  const session = (await sessions.createSession({ metadata: { channel: "browser" } })).session!;
  step(`opened session ${session.sessionId}`);

  const cart = createClient(CartService, transport);
  await cart.addItem({
    sessionId: session.sessionId,
    productId: taco.product!.productId,
    quantity: 2,
    options: [
      { group: "meat", value: "pastor", quantity: 1 },
      { group: "sauce", value: "verde", quantity: 1 },
      { group: "garnish", value: "pineapple", quantity: 1 },
    ],
  });
  const added = await cart.addItem({ sessionId: session.sessionId, productId: drink.product!.productId, quantity: 1 });
  step(`cart: ${added.cart?.items.length} lines, 2 tacos (pastor, verde, pineapple) and a horchata`);

  const orders = createClient(OrderService, transport);
  const placed = (await orders.placeOrder({
    sessionId: session.sessionId,
    customer: { name: "Brenda", email },
    delivery: { type: DeliveryType.PICKUP },
    idempotencyKey: `browser-${unique}`,
  })).order!;
  step(`placed order #${placed.number ?? ""} ${placed.orderId}`);
  show("status", OrderStatus[placed.status], "ok");

  for await (const change of orders.watchOrder({ orderId: placed.orderId })) {
    const status = change.order!.status;
    show("status", `${OrderStatus[status]} (order ${placed.orderId})`, status === OrderStatus.CONFIRMED ? "ok" : "refused");
    if (status === OrderStatus.CONFIRMED) break;
    if (status === OrderStatus.FAILED || status === OrderStatus.CANCELLED) throw new Error(`order ${OrderStatus[status]}`);
  }
  step("watched the order to CONFIRMED over the live stream");

  try {
    await createClient(SessionService, bare).createSession({});
    show("csrf", "accepted (wrong)", "refused");
    throw new Error("a cookie call without x-csrf-token was accepted");
  } catch (error) {
    const code = ConnectError.from(error).code;
    if (code !== Code.PermissionDenied) throw error;
    show("csrf", "PERMISSION_DENIED, as it must be", "ok");
  }
  show("result", "PASSED", "ok");
}

run().catch((error) => {
  show("result", `FAILED: ${error instanceof Error ? error.message : String(error)}`, "refused");
  console.error(error);
});
