// Validates the KEDA objects (ScaledObject, TriggerAuthentication) of rendered manifests against the
// schemas generated from KEDA's CRDs. Usage: node validate-keda.mjs FILE...   (YAML, many documents)
// Other kinds are ignored; kubernetes-validate covers the built-in ones.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";

const models = { ScaledObject, TriggerAuthentication };
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || typeof doc.apiVersion !== "string" || !doc.apiVersion.startsWith("keda.sh/")) continue;
    const Model = doc.apiVersion === "keda.sh/v1alpha1" ? models[doc.kind] : undefined;
    const name = `${doc.kind}/${doc.metadata?.name}`;
    if (!Model) {
      console.log(`FAIL ${file}: no schema for ${doc.apiVersion} ${name}`);
      process.exitCode = 1;
      continue;
    }
    try {
      new Model(doc).validate();
      console.log(`ok   ${file}: ${name}`);
      checked += 1;
    } catch (err) {
      console.log(`FAIL ${file}: ${name}: ${err.message}`);
      process.exitCode = 1;
    }
  }
}
console.log(`${checked} KEDA object(s) valid`);
