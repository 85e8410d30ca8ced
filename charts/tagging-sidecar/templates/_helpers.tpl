{{/*
Chart name, truncated to the 63 characters allowed in label values.
*/}}
{{- define "tagging-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Uses the release name alone when it already contains
the chart name.
*/}}
{{- define "tagging-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tagging-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "tagging-sidecar.labels" -}}
helm.sh/chart: {{ include "tagging-sidecar.chart" . }}
{{ include "tagging-sidecar.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tagging-sidecar
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable on a Deployment: keep them minimal).
*/}}
{{- define "tagging-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tagging-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tagging-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tagging-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tagging-sidecar.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/*
Render a number for an env var. Helm reads every number in values as a
float64, which `toString` prints in exponent form (4194304 -> 4.194304e+06):
print integral values as integers and everything else as-is.
*/}}
{{- define "tagging-sidecar.num" -}}
{{- $v := . -}}
{{- if eq (float64 $v) (floor $v) -}}
{{- int64 $v -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end }}

{{/*
Seconds the kubelet waits after SIGTERM: the application's drain budget plus a
10 s margin for the final commit and process exit.
*/}}
{{- define "tagging-sidecar.terminationGracePeriodSeconds" -}}
{{- add (int64 (ceil .Values.config.shutdown.gracePeriod)) 10 -}}
{{- end }}

{{/*
True (non-empty) when the Kafka security protocol uses SASL / TLS.
*/}}
{{- define "tagging-sidecar.kafkaUsesSasl" -}}
{{- if hasPrefix "SASL_" .Values.config.kafka.securityProtocol }}true{{ end -}}
{{- end }}
{{- define "tagging-sidecar.kafkaUsesTls" -}}
{{- if has .Values.config.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end }}

{{/*
Fail early on combinations that would only surface as a crash-looping pod.
*/}}
{{- define "tagging-sidecar.validate" -}}
{{- $k := .Values.config.kafka -}}
{{- if not $k.topics -}}
{{- fail "config.kafka.topics must list at least one topic" -}}
{{- end -}}
{{- if include "tagging-sidecar.kafkaUsesSasl" . -}}
{{- if not $k.sasl.mechanism -}}
{{- fail (printf "config.kafka.securityProtocol=%s requires config.kafka.sasl.mechanism" $k.securityProtocol) -}}
{{- end -}}
{{- if and (ne $k.sasl.mechanism "OAUTHBEARER") (not $k.sasl.passwordSecret.name) -}}
{{- fail (printf "SASL mechanism %s needs config.kafka.sasl.passwordSecret.name (an existing Secret); passwords are never taken as plain values" $k.sasl.mechanism) -}}
{{- end -}}
{{- if and (ne $k.sasl.mechanism "OAUTHBEARER") (not $k.sasl.username) (not $k.sasl.usernameSecret.name) -}}
{{- fail "SASL needs config.kafka.sasl.username or config.kafka.sasl.usernameSecret.name" -}}
{{- end -}}
{{- $o := $k.sasl.oauthbearer -}}
{{- if and (eq $k.sasl.mechanism "OAUTHBEARER") (not (and $o.clientId $o.clientSecret.name $o.tokenEndpointUrl)) -}}
{{- fail "SASL mechanism OAUTHBEARER needs config.kafka.sasl.oauthbearer.clientId, clientSecret.name (an existing Secret) and tokenEndpointUrl" -}}
{{- end -}}
{{- else if $k.sasl.mechanism -}}
{{- fail (printf "config.kafka.sasl.mechanism is set but config.kafka.securityProtocol=%s does not use SASL (use SASL_SSL or SASL_PLAINTEXT)" $k.securityProtocol) -}}
{{- end -}}
{{- if and (or $k.ssl.certificateKey $k.ssl.keyKey) (not (and $k.ssl.certificateKey $k.ssl.keyKey)) -}}
{{- fail "config.kafka.ssl.certificateKey and config.kafka.ssl.keyKey must be set together" -}}
{{- end -}}
{{- if and (or $k.ssl.certificateKey $k.ssl.keyKey $k.ssl.keyPasswordSecret.name) (not $k.ssl.secretName) -}}
{{- fail "config.kafka.ssl client certificate settings need config.kafka.ssl.secretName" -}}
{{- end -}}
{{- if and $k.ssl.secretName (not (include "tagging-sidecar.kafkaUsesTls" .)) -}}
{{- fail (printf "config.kafka.ssl.secretName is set but config.kafka.securityProtocol=%s does not use TLS (use SSL or SASL_SSL)" $k.securityProtocol) -}}
{{- end -}}
{{- $g := .Values.config.grpc.tls -}}
{{- if and (or $g.certKey $g.keyKey) (not (and $g.certKey $g.keyKey)) -}}
{{- fail "config.grpc.tls.certKey and config.grpc.tls.keyKey must be set together" -}}
{{- end -}}
{{- if and $g.secretName (not $g.enabled) -}}
{{- fail "config.grpc.tls.secretName is set but config.grpc.tls.enabled is false" -}}
{{- end -}}
{{- if and (or $g.certKey $g.keyKey) (not $g.secretName) -}}
{{- fail "config.grpc.tls client certificate settings need config.grpc.tls.secretName" -}}
{{- end -}}
{{- if gt (int64 .Values.config.pool.minWorkers) (int64 .Values.config.pool.maxWorkers) -}}
{{- fail "config.pool.minWorkers must not exceed config.pool.maxWorkers" -}}
{{- end -}}
{{- if .Values.sidecarMode.enabled -}}
{{- if not .Values.sidecarMode.appContainer.name -}}
{{- fail "sidecarMode.enabled needs sidecarMode.appContainer with at least name and image" -}}
{{- end -}}
{{- $httpPort := int64 .Values.config.http.port -}}
{{- range .Values.sidecarMode.appContainer.ports -}}
{{- if eq (int64 .containerPort) $httpPort -}}
{{- fail (printf "config.http.port %d is also a port of sidecarMode.appContainer: containers of one pod share the network namespace, so set a different config.http.port" $httpPort) -}}
{{- end -}}
{{- end -}}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.config.grpc.target "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if not (has $host (list "localhost" "127.0.0.1" "::1")) -}}
{{- fail (printf "sidecarMode.enabled: config.grpc.target must point at the app in the same pod (localhost:PORT / 127.0.0.1:PORT), got %q" .Values.config.grpc.target) -}}
{{- end -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- if gt (int64 .Values.keda.minReplicaCount) (int64 .Values.keda.maxReplicaCount) -}}
{{- fail "keda.minReplicaCount must not exceed keda.maxReplicaCount" -}}
{{- end -}}
{{- if .Values.keda.limitToPartitionsWithLag -}}
{{- if .Values.keda.allowIdleConsumers -}}
{{- fail "keda.limitToPartitionsWithLag and keda.allowIdleConsumers cannot both be true (the KEDA kafka scaler refuses the pair)" -}}
{{- end -}}
{{- if not (include "tagging-sidecar.kedaTopic" .) -}}
{{- fail "keda.limitToPartitionsWithLag needs one topic: set keda.topic, or consume exactly one topic in config.kafka.topics" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
A Secret-backed value: either a secretKeyRef env var or, with mountAsFile, a
*_FILE env var pointing into the mounted Secret. Never a literal value.
args: dict "env" NAME "ref" {name,key,mountAsFile} "dir" MOUNTDIR
*/}}
{{- define "tagging-sidecar.secretEnv" -}}
{{- if .ref.mountAsFile }}
- name: {{ .env }}_FILE
  value: {{ printf "%s/%s" .dir .ref.key | quote }}
{{- else }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name | quote }}
      key: {{ .ref.key | quote }}
{{- end }}
{{- end }}

{{/*
Environment of the sidecar container: one TAGGING_* variable per setting.
*/}}
{{- define "tagging-sidecar.env" -}}
{{- $c := .Values.config -}}
{{- $k := $c.kafka -}}
- name: TAGGING_PROCESSES
  value: {{ include "tagging-sidecar.num" $c.processes | quote }}
- name: TAGGING_KAFKA__BOOTSTRAP_SERVERS
  value: {{ $k.bootstrapServers | quote }}
- name: TAGGING_KAFKA__TOPICS
  value: {{ join "," $k.topics | quote }}
- name: TAGGING_KAFKA__GROUP_ID
  value: {{ $k.groupId | quote }}
- name: TAGGING_KAFKA__AUTO_OFFSET_RESET
  value: {{ $k.autoOffsetReset | quote }}
- name: TAGGING_KAFKA__CONSUME_BATCH_SIZE
  value: {{ include "tagging-sidecar.num" $k.consumeBatchSize | quote }}
- name: TAGGING_KAFKA__COMMIT_INTERVAL
  value: {{ include "tagging-sidecar.num" $k.commitInterval | quote }}
- name: TAGGING_KAFKA__COMMIT_EVERY
  value: {{ include "tagging-sidecar.num" $k.commitEvery | quote }}
- name: TAGGING_KAFKA__MAX_UNCOMMITTED
  value: {{ include "tagging-sidecar.num" $k.maxUncommitted | quote }}
- name: TAGGING_KAFKA__SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if $k.properties }}
- name: TAGGING_KAFKA__PROPERTIES
  value: {{ toJson $k.properties | quote }}
{{- end }}
{{- if $k.sasl.mechanism }}
- name: TAGGING_KAFKA__SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
{{- if $k.sasl.usernameSecret.name }}
- name: TAGGING_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.usernameSecret.name | quote }}
      key: {{ $k.sasl.usernameSecret.key | quote }}
{{- else if $k.sasl.username }}
- name: TAGGING_KAFKA__SASL_USERNAME
  value: {{ $k.sasl.username | quote }}
{{- end }}
{{- if $k.sasl.passwordSecret.name }}
{{- include "tagging-sidecar.secretEnv" (dict "env" "TAGGING_KAFKA__SASL_PASSWORD" "ref" $k.sasl.passwordSecret "dir" "/etc/tagging-sidecar/kafka-sasl-password") }}
{{- end }}
{{- if eq $k.sasl.mechanism "OAUTHBEARER" }}
{{- $o := $k.sasl.oauthbearer }}
- name: TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID
  value: {{ $o.clientId | quote }}
{{- include "tagging-sidecar.secretEnv" (dict "env" "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET" "ref" $o.clientSecret "dir" "/etc/tagging-sidecar/kafka-oauth-client-secret") }}
- name: TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL
  value: {{ $o.tokenEndpointUrl | quote }}
{{- if $o.scope }}
- name: TAGGING_KAFKA__SASL_OAUTHBEARER_SCOPE
  value: {{ $o.scope | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if $k.ssl.secretName }}
{{- if $k.ssl.caKey }}
- name: TAGGING_KAFKA__SSL_CA_LOCATION
  value: {{ printf "%s/%s" $k.ssl.mountPath $k.ssl.caKey | quote }}
{{- end }}
{{- if $k.ssl.certificateKey }}
- name: TAGGING_KAFKA__SSL_CERTIFICATE_LOCATION
  value: {{ printf "%s/%s" $k.ssl.mountPath $k.ssl.certificateKey | quote }}
- name: TAGGING_KAFKA__SSL_KEY_LOCATION
  value: {{ printf "%s/%s" $k.ssl.mountPath $k.ssl.keyKey | quote }}
{{- end }}
{{- if $k.ssl.keyPasswordSecret.name }}
{{- include "tagging-sidecar.secretEnv" (dict "env" "TAGGING_KAFKA__SSL_KEY_PASSWORD" "ref" $k.ssl.keyPasswordSecret "dir" "/etc/tagging-sidecar/kafka-ssl-key-password") }}
{{- end }}
{{- end }}
{{- $g := $c.grpc }}
- name: TAGGING_GRPC__TARGET
  value: {{ $g.target | quote }}
- name: TAGGING_GRPC__MODE
  value: {{ $g.mode | quote }}
- name: TAGGING_GRPC__SINGLE_TRANSPORT
  value: {{ $g.singleTransport | quote }}
- name: TAGGING_GRPC__TIMEOUT
  value: {{ include "tagging-sidecar.num" $g.timeout | quote }}
- name: TAGGING_GRPC__MAX_MESSAGE_BYTES
  value: {{ include "tagging-sidecar.num" $g.maxMessageBytes | quote }}
- name: TAGGING_GRPC__RETRY_INITIAL_BACKOFF
  value: {{ include "tagging-sidecar.num" $g.retryInitialBackoff | quote }}
- name: TAGGING_GRPC__RETRY_MAX_BACKOFF
  value: {{ include "tagging-sidecar.num" $g.retryMaxBackoff | quote }}
- name: TAGGING_GRPC__MAX_ATTEMPTS
  value: {{ include "tagging-sidecar.num" $g.maxAttempts | quote }}
- name: TAGGING_GRPC__TLS
  value: {{ $g.tls.enabled | toString | quote }}
{{- if and $g.tls.enabled $g.tls.secretName }}
{{- if $g.tls.caKey }}
- name: TAGGING_GRPC__CA_FILE
  value: {{ printf "%s/%s" $g.tls.mountPath $g.tls.caKey | quote }}
{{- end }}
{{- if $g.tls.certKey }}
- name: TAGGING_GRPC__CERT_FILE
  value: {{ printf "%s/%s" $g.tls.mountPath $g.tls.certKey | quote }}
- name: TAGGING_GRPC__KEY_FILE
  value: {{ printf "%s/%s" $g.tls.mountPath $g.tls.keyKey | quote }}
{{- end }}
{{- end }}
- name: TAGGING_POOL__MIN_WORKERS
  value: {{ include "tagging-sidecar.num" $c.pool.minWorkers | quote }}
- name: TAGGING_POOL__MAX_WORKERS
  value: {{ include "tagging-sidecar.num" $c.pool.maxWorkers | quote }}
- name: TAGGING_POOL__SCALING
  value: {{ $c.pool.scaling | quote }}
- name: TAGGING_POOL__QUEUE_SIZE
  value: {{ include "tagging-sidecar.num" $c.pool.queueSize | quote }}
- name: TAGGING_POOL__MAX_BATCH
  value: {{ include "tagging-sidecar.num" $c.pool.maxBatch | quote }}
- name: TAGGING_POOL__IDLE_TIMEOUT
  value: {{ include "tagging-sidecar.num" $c.pool.idleTimeout | quote }}
- name: TAGGING_POOL__ORDERING
  value: {{ $c.pool.ordering | quote }}
- name: TAGGING_POOL__LINGER
  value: {{ include "tagging-sidecar.num" $c.pool.linger | quote }}
- name: TAGGING_POOL__CALL_ON_POLL
  value: {{ $c.pool.callOnPoll | toString | quote }}
- name: TAGGING_POOL__MAX_INFLIGHT_BYTES
  value: {{ include "tagging-sidecar.num" $c.pool.maxInflightBytes | quote }}
- name: TAGGING_POOL__MAX_INFLIGHT_RECORDS
  value: {{ include "tagging-sidecar.num" $c.pool.maxInflightRecords | quote }}
- name: TAGGING_DECODE__FORMAT
  value: {{ $c.decode.format | quote }}
- name: TAGGING_DECODE__TOMBSTONES
  value: {{ $c.decode.tombstones | quote }}
{{- if $c.dlq.topic }}
- name: TAGGING_DLQ__TOPIC
  value: {{ $c.dlq.topic | quote }}
- name: TAGGING_DLQ__TRUNCATE_TO
  value: {{ include "tagging-sidecar.num" $c.dlq.truncateTo | quote }}
{{- end }}
- name: TAGGING_LOG__FORMAT
  value: {{ $c.log.format | quote }}
- name: TAGGING_LOG__LEVEL
  value: {{ $c.log.level | quote }}
- name: TAGGING_HTTP__HOST
  value: "0.0.0.0"
- name: TAGGING_HTTP__PORT
  value: {{ include "tagging-sidecar.num" $c.http.port | quote }}
- name: TAGGING_SHUTDOWN__GRACE_PERIOD
  value: {{ include "tagging-sidecar.num" $c.shutdown.gracePeriod | quote }}
- name: TAGGING_HEALTH__STALL_TIMEOUT
  value: {{ include "tagging-sidecar.num" $c.health.stallTimeout | quote }}
{{- end }}

{{/*
Secret-backed volumes (name, secret, mount path) needed by the current config.
Returned as YAML list so the Deployment can render volumes and mounts from one
source of truth.
*/}}
{{- define "tagging-sidecar.secretMounts" -}}
{{- $k := .Values.config.kafka -}}
{{- $out := list -}}
{{- if and $k.sasl.mechanism $k.sasl.passwordSecret.name $k.sasl.passwordSecret.mountAsFile -}}
{{- $out = append $out (dict "name" "kafka-sasl-password" "secret" $k.sasl.passwordSecret.name "path" "/etc/tagging-sidecar/kafka-sasl-password") -}}
{{- end -}}
{{- $oauthSecret := $k.sasl.oauthbearer.clientSecret -}}
{{- if and (eq $k.sasl.mechanism "OAUTHBEARER") $oauthSecret.name $oauthSecret.mountAsFile -}}
{{- $out = append $out (dict "name" "kafka-oauth-client-secret" "secret" $oauthSecret.name "path" "/etc/tagging-sidecar/kafka-oauth-client-secret") -}}
{{- end -}}
{{- if $k.ssl.secretName -}}
{{- $out = append $out (dict "name" "kafka-tls" "secret" $k.ssl.secretName "path" $k.ssl.mountPath) -}}
{{- if and $k.ssl.keyPasswordSecret.name $k.ssl.keyPasswordSecret.mountAsFile -}}
{{- $out = append $out (dict "name" "kafka-ssl-key-password" "secret" $k.ssl.keyPasswordSecret.name "path" "/etc/tagging-sidecar/kafka-ssl-key-password") -}}
{{- end -}}
{{- end -}}
{{- $g := .Values.config.grpc.tls -}}
{{- if and $g.enabled $g.secretName -}}
{{- $out = append $out (dict "name" "grpc-tls" "secret" $g.secretName "path" $g.mountPath) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end }}

{{/*
KEDA trigger topic: explicit keda.topic, else the only configured topic, else
empty (KEDA then watches every topic of the consumer group).
*/}}
{{- define "tagging-sidecar.kedaTopic" -}}
{{- if .Values.keda.topic -}}
{{- .Values.keda.topic -}}
{{- else if eq (len .Values.config.kafka.topics) 1 -}}
{{- first .Values.config.kafka.topics -}}
{{- end -}}
{{- end }}

{{/*
Whether the chart creates a TriggerAuthentication for the KEDA Kafka scaler.
*/}}
{{- define "tagging-sidecar.kedaCreateAuth" -}}
{{- if and .Values.keda.enabled (not .Values.keda.authenticationRef) -}}
{{- if or (include "tagging-sidecar.kafkaUsesSasl" .) (include "tagging-sidecar.kedaSecretRefs" .) -}}
true
{{- end -}}
{{- end -}}
{{- end }}

{{/*
IntOrString for PDB fields: numbers as integers, "50%"-style strings quoted.
*/}}
{{- define "tagging-sidecar.intOrPercent" -}}
{{- if kindIs "string" . -}}
{{- . | quote -}}
{{- else -}}
{{- include "tagging-sidecar.num" . -}}
{{- end -}}
{{- end }}

{{/*
Container resources without empty entries: a quantity of "" or null means "none", and the API
server rejects an empty quantity.
*/}}
{{- define "tagging-sidecar.resources" -}}
{{- $out := dict -}}
{{- range $kind, $quantities := . -}}
{{- if not (kindIs "map" $quantities) -}}
{{- $_ := set $out $kind $quantities -}}
{{- continue -}}
{{- end -}}
{{- $kept := dict -}}
{{- range $name, $quantity := $quantities -}}
{{- if and (not (kindIs "invalid" $quantity)) (ne (toString $quantity) "") -}}
{{- $_ := set $kept $name $quantity -}}
{{- end -}}
{{- end -}}
{{- if $kept -}}
{{- $_ := set $out $kind $kept -}}
{{- end -}}
{{- end -}}
{{- if $out -}}
{{- toYaml $out -}}
{{- end -}}
{{- end }}

{{/*
secretTargetRef entries of the KEDA TriggerAuthentication (empty when nothing is needed).
*/}}
{{- define "tagging-sidecar.kedaSecretRefs" -}}
{{- $k := .Values.config.kafka -}}
{{- $sasl := include "tagging-sidecar.kafkaUsesSasl" . -}}
{{- $oauth := and $sasl (eq $k.sasl.mechanism "OAUTHBEARER") -}}
{{- $o := $k.sasl.oauthbearer -}}
{{- if $oauth }}
- parameter: password
  name: {{ $o.clientSecret.name | quote }}
  key: {{ $o.clientSecret.key | quote }}
{{- else if and $sasl $k.sasl.passwordSecret.name }}
- parameter: password
  name: {{ $k.sasl.passwordSecret.name | quote }}
  key: {{ $k.sasl.passwordSecret.key | quote }}
{{- end }}
{{- if and (include "tagging-sidecar.kafkaUsesTls" .) $k.ssl.secretName }}
{{- if $k.ssl.caKey }}
- parameter: ca
  name: {{ $k.ssl.secretName | quote }}
  key: {{ $k.ssl.caKey | quote }}
{{- end }}
{{- if $k.ssl.certificateKey }}
- parameter: cert
  name: {{ $k.ssl.secretName | quote }}
  key: {{ $k.ssl.certificateKey | quote }}
- parameter: key
  name: {{ $k.ssl.secretName | quote }}
  key: {{ $k.ssl.keyKey | quote }}
{{- end }}
{{- if $k.ssl.keyPasswordSecret.name }}
- parameter: keyPassword
  name: {{ $k.ssl.keyPasswordSecret.name | quote }}
  key: {{ $k.ssl.keyPasswordSecret.key | quote }}
{{- end }}
{{- end }}
{{- end }}
