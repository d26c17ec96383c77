// Pays for URL with the official x402 client (@x402/fetch + @x402/evm + viem), signing offline
// with the private key KEY. Prints one JSON line: the final status and body, the decoded
// PAYMENT-RESPONSE, and the payment header it sent (base64, as sent).
//   node client.mjs URL KEY
import { wrapFetchWithPaymentFromConfig, decodePaymentResponseHeader } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import { privateKeyToAccount } from "viem/accounts";

const [url, key] = process.argv.slice(2);
const account = privateKeyToAccount(key);
let sent = null;
const recording = async (input, init) => {
  const req = new Request(input, init);
  sent = req.headers.get("payment-signature") ?? req.headers.get("x-payment") ?? sent;
  return fetch(req);
};
const pay = wrapFetchWithPaymentFromConfig(recording, {
  schemes: [{ network: "eip155:84532", client: new ExactEvmScheme(account) }],
});
const resp = await pay(url, { method: "GET" });
const settlement = resp.headers.get("payment-response");
console.log(JSON.stringify({
  status: resp.status,
  body: await resp.text(),
  address: account.address,
  paymentResponse: settlement ? decodePaymentResponseHeader(settlement) : null,
  sent,
}));
