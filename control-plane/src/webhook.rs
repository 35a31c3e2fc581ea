//! The mutating admission webhook's logic: Kubernetes sends each Pod being created as an
//! `AdmissionReview` (admission.k8s.io/v1); the answer allows it, with a JSON Patch that
//! adds the sidecar (`inject`) when the pod wants one, or no patch when it does not
//! (opted out, already injected, or not a Pod). Pure: the TLS server is the `presage
//! inject-webhook` command's.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::inject::{self, Options};

/// Answers one AdmissionReview request body; Err names what is wrong with it (the
/// server answers 400).
pub fn review(body: &[u8], o: &Options) -> Result<Value, String> {
    let req: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if req["apiVersion"] != "admission.k8s.io/v1" || req["kind"] != "AdmissionReview" {
        return Err(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, found apiVersion {} kind {}",
            req["apiVersion"], req["kind"]
        ));
    }
    let request = &req["request"];
    let uid = request["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or("request.uid: expected the request's uid")?;
    let mut response = json!({"uid": uid, "allowed": true});
    let is_pod = request["kind"]["kind"] == "Pod" && request["kind"]["group"] == "";
    let object = &request["object"];
    if is_pod && object.is_object() {
        let mut before = object.clone();
        // Objects in reviews may leave out their type; injection goes by it.
        before["kind"] = json!("Pod");
        before["apiVersion"] = json!("v1");
        let mut after = before.clone();
        if inject::inject_document(&mut after, o).map_err(|e| format!("request.object: {e}"))? {
            let patch = json_patch::diff(&before, &after);
            let bytes = serde_json::to_vec(&patch).map_err(|e| e.to_string())?;
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "object": object,
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_gets_a_patch_and_an_opted_out_pod_none() {
        let o = Options::default();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "a"}]}});
        let r = review(&review_of(pod.clone()), &o).unwrap();
        assert_eq!(r["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["response"]["allowed"], true);
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let mut quiet = pod;
        quiet["metadata"]["annotations"] = json!({"presage.io/inject": "disabled"});
        let r = review(&review_of(quiet), &o).unwrap();
        assert_eq!(r["response"]["allowed"], true);
        assert!(r["response"].get("patch").is_none(), "{r}");
    }

    #[test]
    fn bad_reviews_are_named() {
        let o = Options::default();
        assert!(review(b"{", &o).unwrap_err().starts_with("not JSON"));
        let e = review(br#"{"apiVersion": "v1", "kind": "Pod"}"#, &o).unwrap_err();
        assert!(e.contains("AdmissionReview"), "{e}");
        let e = review(
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}"#,
            &o,
        )
        .unwrap_err();
        assert!(e.starts_with("request.uid"), "{e}");
    }
}
