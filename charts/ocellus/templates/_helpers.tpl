{{/* Common names and labels. */}}
{{- define "ocellus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ocellus.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ocellus.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ocellus.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{- define "ocellus.s3Secret" -}}
{{- if .Values.s3.existingSecret -}}
{{- .Values.s3.existingSecret -}}
{{- else -}}
{{- printf "%s-s3" (include "ocellus.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "ocellus.s3Endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{- .Values.s3.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "http://%s-minio.%s.svc:9000" (include "ocellus.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Least-privilege container security context shared by every container. */}}
{{- define "ocellus.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "ocellus.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* S3 settings as container env. */}}
{{- define "ocellus.s3Env" -}}
- name: OCELLUS_S3_ENDPOINT
  value: {{ include "ocellus.s3Endpoint" . | quote }}
- name: OCELLUS_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: OCELLUS_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: OCELLUS_S3_FORCE_PATH_STYLE
  value: {{ .Values.s3.forcePathStyle | quote }}
- name: OCELLUS_S3_SECRET
  value: {{ include "ocellus.s3Secret" . | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "ocellus.s3Secret" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "ocellus.s3Secret" . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end -}}

{{/*
The bootstrap admin API key: the existing Secret's on upgrade, else a new `ul_` + 40 hex. Kept in
.Values for the rest of this render, so that the Secret and NOTES.txt show the same key.
*/}}
{{- define "ocellus.bootstrapKey" -}}
{{- if not (hasKey .Values "_bootstrapKey") -}}
{{- $name := printf "%s-bootstrap-api-key" (include "ocellus.fullname" .) -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name -}}
{{- $key := printf "ul_%s" (sha1sum (randAlphaNum 64)) -}}
{{- if and $existing $existing.data (hasKey $existing.data "api-key") -}}
{{- $key = index $existing.data "api-key" | b64dec -}}
{{- end -}}
{{- $_ := set .Values "_bootstrapKey" $key -}}
{{- end -}}
{{- .Values._bootstrapKey -}}
{{- end -}}
