-- Argo CD health of the Ocellus resources (Dataset, TrainingJob, Export, ModelDeployment), from
-- their kstatus conditions and observedGeneration. Install it for each kind under
-- resource.customizations.health.ocellus.dev_<Kind> in argocd-cm (docs/gitops.md).
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
local gen = obj.metadata.generation
if gen ~= nil and obj.status.observedGeneration ~= gen then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(gen)
  return hs
end
local cond = {}
for _, c in ipairs(obj.status.conditions) do
  cond[c.type] = c
end
local function says(t) return cond[t] ~= nil and cond[t].status == "True" end
local function text(c) return c.message or c.reason or "" end
local phase = obj.status.phase
if says("Stalled") or says("Failed") then
  hs.status = "Degraded"
  hs.message = text(cond["Stalled"] or cond["Failed"])
elseif says("Reconciling") then
  -- Work under way, e.g. a suspended TrainingJob resuming.
  hs.status = "Progressing"
  hs.message = text(cond["Reconciling"])
elseif phase == "Suspended" or phase == "Stopped" or phase == "Expired" then
  -- Held by the spec (TrainingJob suspend, ModelDeployment stopped or durationHours).
  hs.status = "Suspended"
  hs.message = text(cond["Ready"] or {reason = phase})
elseif says("Ready") then
  hs.status = "Healthy"
  hs.message = text(cond["Ready"])
else
  hs.status = "Progressing"
  hs.message = text(cond["Progressing"] or cond["Ready"] or {reason = phase or "Pending"})
end
return hs
